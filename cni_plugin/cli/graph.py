"""`weftctl graph`: the cluster as an SVG picture (pure Python, no graphviz).

    weftctl graph [NETWORK] [--ipam-data-dir DIR ...] [-o FILE] [--etcd-* flags]

Nodes come from the leases in etcd (one box per node: public IP, and per network its
subnet and VTEP), networks from their configs (Network, backend, VNI), pods from weft-ipam
stores given with --ipam-data-dir (each pod is drawn in the node whose subnet holds its
address).  The same renderer draws the README's architecture picture
(docs/architecture.py), so a model is plain data:

    {"title": str,
     "etcd": str,                                    # a label for the etcd box
     "networks": [{"name", "network", "backend", "vni"}],
     "nodes": [{"name", "publicIP",
                "components": [str, ...],            # optional boxes (architecture only)
                "leases": [{"network", "subnet", "vtepMAC", "vni", "device"}],  # + "subnets": every family
                "pods": [{"name", "ip", "network", "ifname"}]}],
     "notes": [str, ...]}                            # optional lines under the picture

Output is deterministic: the same model gives the same bytes.
"""

import ipaddress
import os
import sys
from xml.sax.saxutils import escape, quoteattr

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
PALETTE = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#c53030"]
CHAR_W = 6.8          # average advance of a 12 px character, for box widths
MARGIN, GAP, PAD = 24, 36, 12
NODE_MIN_W = 290
LINE_H, POD_H, COMP_H = 18, 34, 26


class Svg:
    """A small SVG writer: shapes and text appended in drawing order."""

    def __init__(self):
        self.items = []

    def rect(self, x, y, w, h, fill="#ffffff", stroke="#4a5568", rx=6, dash=None, width=1.2):
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.items.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{rx}" '
                          f'fill="{fill}" stroke="{stroke}" stroke-width="{width}"{extra}/>')

    def line(self, x1, y1, x2, y2, stroke="#4a5568", width=1.5, dash=None, arrow=False):
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        extra += ' marker-end="url(#arrow)"' if arrow else ""
        self.items.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                          f'stroke="{stroke}" stroke-width="{width}"{extra}/>')

    def curve(self, x1, y1, cx, cy, x2, y2, stroke, dash="6 4", width=1.6):
        self.items.append(f'<path d="M {x1:.1f} {y1:.1f} Q {cx:.1f} {cy:.1f} {x2:.1f} {y2:.1f}" '
                          f'fill="none" stroke="{stroke}" stroke-width="{width}" stroke-dasharray="{dash}"/>')

    def circle(self, x, y, r, fill):
        self.items.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}"/>')

    def text(self, x, y, content, size=12, weight="normal", fill="#1a202c", anchor="start", mono=False):
        family = MONO if mono else FONT
        self.items.append(f'<text x="{x:.1f}" y="{y:.1f}" font-family={quoteattr(family)} font-size="{size}" '
                          f'font-weight="{weight}" fill="{fill}" text-anchor="{anchor}">'
                          f'{escape(str(content))}</text>')

    def render(self, width, height) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
                f'viewBox="0 0 {width:.0f} {height:.0f}">\n'
                '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
                'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
                'fill="#4a5568"/></marker></defs>\n'
                f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>\n')
        return head + "\n".join(self.items) + "\n</svg>\n"


def _width(text: str, size: int = 12) -> float:
    return len(text) * CHAR_W * size / 12


def _colors(model) -> dict:
    names = sorted({n["name"] for n in model.get("networks", [])} |
                   {lease["network"] for node in model["nodes"] for lease in node.get("leases", [])})
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _pod_label(pod) -> str:
    suffix = "" if pod.get("ifname", "eth0") == "eth0" else f" ({pod['ifname']})"
    return f"{pod['ip']}{suffix}"


def _node_width(node) -> float:
    texts = [f"{node['name']}   {node.get('publicIP', '')}"]
    texts += [f"{l['network']}  {l['subnet']}" for l in node.get("leases", [])]
    texts += [f"{l.get('device', '')}  VTEP {l.get('vtepMAC') or '-'}" for l in node.get("leases", [])]
    widest_pod = max([_width(p["name"]) for p in node.get("pods", [])] + [0])
    widest_comp = max([_width(c) for c in node.get("components", [])] + [0])
    return max(NODE_MIN_W, max(_width(t) for t in texts) + 2 * PAD + 10,
               2 * (widest_pod + 2 * PAD) + PAD, 2 * (widest_comp + 2 * PAD) + PAD)


def _node_height(node) -> float:
    comps = node.get("components", [])
    height = 40 + ((len(comps) + 1) // 2) * (COMP_H + 8)
    for lease in node.get("leases", []):
        pods = [p for p in node.get("pods", []) if p["network"] == lease["network"]]
        height += 2 * LINE_H + 10 + ((len(pods) + 1) // 2) * (POD_H + 6) + 8
    return height + PAD


def render(model: dict) -> str:
    svg = Svg()
    colors = _colors(model)
    nodes = model["nodes"]
    widths = [_node_width(n) for n in nodes]
    body_h = max([_node_height(n) for n in nodes] + [60])
    top = MARGIN + 30
    legend = model.get("networks", [])
    if legend:
        top += 22 * len(legend)
    total_w = MARGIN * 2 + sum(widths) + GAP * max(len(nodes) - 1, 0)
    total_w = max(total_w, MARGIN * 2 + 520)
    svg.text(MARGIN, MARGIN + 8, model.get("title", "weft cluster"), size=16, weight="bold")
    for i, net in enumerate(legend):
        y = MARGIN + 30 + 22 * i
        svg.rect(MARGIN, y - 11, 14, 14, fill=colors[net["name"]], stroke=colors[net["name"]], rx=3)
        backend = net.get("backend", "vxlan")
        vni = f", VNI {net['vni']}" if backend == "vxlan" and net.get("vni") is not None else ""
        svg.text(MARGIN + 22, y, f"network {net['name']}: {net.get('network', '?')} ({backend}{vni})")

    vteps = {}   # network -> [(x, y)] of each node's VTEP marker
    x = MARGIN
    bottom = top + body_h
    for node, width in zip(nodes, widths):
        svg.rect(x, top, width, body_h, fill="#f7fafc", stroke="#2d3748", rx=10, width=1.6)
        svg.text(x + PAD, top + 22, node["name"], size=14, weight="bold")
        svg.text(x + width - PAD, top + 22, node.get("publicIP", ""), size=12, anchor="end", mono=True)
        y = top + 36
        comps = node.get("components", [])
        comp_w = (width - 3 * PAD) / 2
        for i, comp in enumerate(comps):
            cx = x + PAD + (i % 2) * (comp_w + PAD)
            cy = y + (i // 2) * (COMP_H + 8)
            svg.rect(cx, cy, comp_w, COMP_H, fill="#edf2f7", stroke="#718096", rx=4)
            svg.text(cx + comp_w / 2, cy + 17, comp, size=11, anchor="middle")
        y += ((len(comps) + 1) // 2) * (COMP_H + 8)
        for lease in node.get("leases", []):
            color = colors[lease["network"]]
            svg.rect(x + PAD - 4, y, width - 2 * PAD + 8, LINE_H + 2, fill=color, stroke=color, rx=4)
            svg.text(x + PAD + 2, y + 14, f"{lease['network']}  {lease['subnet']}", size=12,
                     weight="bold", fill="#ffffff")
            y += LINE_H + 6
            device = lease.get("device") or ""
            svg.text(x + PAD + 2, y + 12, f"{device}  VTEP {lease.get('vtepMAC') or '-'}", size=11,
                     fill=color, mono=True)
            y += LINE_H + 4
            pods = sorted((p for p in node.get("pods", []) if p["network"] == lease["network"]),
                          key=lambda p: (ipaddress.ip_address(p["ip"]), p["name"]))
            pod_w = (width - 3 * PAD) / 2
            for i, pod in enumerate(pods):
                px = x + PAD + (i % 2) * (pod_w + PAD)
                py = y + (i // 2) * (POD_H + 6)
                svg.rect(px, py, pod_w, POD_H, fill="#ffffff", stroke=color, rx=5)
                svg.text(px + 8, py + 14, pod["name"], size=11, weight="bold")
                svg.text(px + 8, py + 28, _pod_label(pod), size=11, mono=True)
            y += ((len(pods) + 1) // 2) * (POD_H + 6) + 8
            vteps.setdefault(lease["network"], []).append(x + width / 2)
        x += width + GAP

    # the underlay: every node's public address on one line, etcd on it
    underlay_y = bottom + 40 + 26 * len(vteps)
    svg.line(MARGIN, underlay_y, total_w - MARGIN, underlay_y, stroke="#2d3748", width=3)
    svg.text(total_w - MARGIN, underlay_y + 18, "underlay (node public IPs)", size=11, anchor="end",
             fill="#4a5568")
    for centre in [MARGIN + sum(widths[:i]) + GAP * i + widths[i] / 2 for i in range(len(nodes))]:
        svg.line(centre, bottom, centre, underlay_y, stroke="#2d3748", width=2)
    etcd = model.get("etcd")
    if etcd:
        label = f"etcd  {etcd}"
        ew = _width(label) + 2 * PAD
        svg.rect(MARGIN, underlay_y + 28, ew, 28, fill="#fffbea", stroke="#b7791f", rx=5)
        svg.text(MARGIN + PAD, underlay_y + 46, label, size=12)
        svg.line(MARGIN + ew / 2, underlay_y + 28, MARGIN + ew / 2, underlay_y, stroke="#b7791f", width=2)
    # overlay tunnels between every pair of nodes, one dashed curve per network
    for level, network in enumerate(sorted(vteps)):
        points = vteps[network]
        y0 = bottom + 14 + 26 * level
        for i, a in enumerate(points):
            svg.circle(a, y0, 4, colors[network])
            for b in points[i + 1:]:
                svg.curve(a, y0, (a + b) / 2, y0 + 22, b, y0, colors[network])
    notes = model.get("notes", [])
    height = underlay_y + (70 if etcd else 34)
    for note in notes:
        svg.text(MARGIN, height, note, size=11, fill="#4a5568")
        height += 16
    return svg.render(total_w, height + MARGIN - 10)


# -- the model from etcd and weft-ipam stores -----------------------------------------

def _device_label(lease) -> str:
    """The lease's device as its backend names it (the backend's name when it has none)."""
    from .. import backends

    try:
        backend = backends.get(lease.backend_type)
    except KeyError:
        return lease.backend_type
    return backend.device_label(lease.backend_data)


def pods_from_store(data_dir: str) -> list:
    """Attachments holding an address now, replayed from each network's history.jsonl."""
    from ..ipam import history

    pods = []
    try:
        networks = sorted(os.listdir(data_dir))
    except OSError:
        return []
    for network in networks:
        path = os.path.join(data_dir, network, "history.jsonl")
        held = {}
        for _, record in history.read_events(path):
            key = (record["ip"], record.get("containerID"), record.get("ifname"))
            if record["event"] == history.ALLOCATE:
                held.setdefault(key, record)
            else:
                held.pop(key, None)
        for (ip, cid, ifname), record in sorted(held.items()):
            namespace, name = record.get("podNamespace"), record.get("podName")
            label = f"{namespace}/{name}" if namespace and name else (cid or "?")[:12]
            pods.append({"name": label, "ip": ip, "network": record.get("network") or network,
                         "ifname": ifname or "eth0"})
    return pods


def model_from_registry(registry, networks=None, data_dirs=()) -> dict:
    from ..subnet.lease import ConfigError, Lease, NetworkConfig

    names = list(networks) if networks else registry.network_names()
    nets, nodes = [], {}
    for name in names:
        text = registry.get_network_config(name)
        try:
            config = NetworkConfig.parse(name, text) if text else None
        except ConfigError:
            config = None
        nets.append({"name": name, "network": ", ".join(map(str, config.networks)) if config else "?",
                     "backend": config.backend_type if config else "?",
                     "vni": getattr(config.backend, "vni", None) if config else None})
        raw, _ = registry.list_leases(name)
        for key, value, *_ in raw:
            try:
                lease = Lease.from_json(key, value)
            except ConfigError:
                continue
            node = nodes.setdefault(lease.node_name, {"name": lease.node_name,
                                                      "publicIP": lease.underlay_text,
                                                      "leases": [], "pods": []})
            node["leases"].append({"network": name, "subnet": str(lease.key_subnet),
                                   "subnets": [str(s) for s in lease.subnets],
                                   "vtepMAC": lease.vtep_mac,
                                   "vni": getattr(lease.backend_data, "vni", None),
                                   "device": _device_label(lease)})
    pods = [p for d in data_dirs for p in pods_from_store(d)]
    for pod in pods:
        for node in nodes.values():
            if any(lease["network"] == pod["network"]
                   and any(ipaddress.ip_address(pod["ip"]) in ipaddress.ip_network(s) for s in lease["subnets"])
                   for lease in node["leases"]):
                node["pods"].append(pod)
                break
    endpoints = ", ".join(e.url for e in registry.endpoints)
    return {"title": "weft cluster", "etcd": endpoints, "networks": nets,
            "nodes": [nodes[n] for n in sorted(nodes)]}


# -- weftctl wiring -------------------------------------------------------------------

def add_parser(commands, etcd_flags):
    parser = commands.add_parser("graph", help="the cluster as an SVG: nodes, subnets, VTEPs, pods")
    parser.add_argument("network", nargs="?", help="only this network (default: every network)")
    parser.add_argument("--ipam-data-dir", action="append", default=[], metavar="DIR",
                        help="a weft-ipam dataDir whose pods are drawn (repeatable)")
    parser.add_argument("-o", "--output", default="-", help="SVG file (default: stdout)")
    etcd_flags(parser)
    return parser


def run(args, registry_factory) -> int:
    model = model_from_registry(registry_factory(args), [args.network] if args.network else None,
                                args.ipam_data_dir)
    if not model["nodes"]:
        print(f"weftctl: no leases in etcd{' for network ' + args.network if args.network else ''}",
              file=sys.stderr)
        return 1
    text = render(model)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as handle:
            handle.write(text)
    return 0
