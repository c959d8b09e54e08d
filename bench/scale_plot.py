"""The scale figure as an SVG: one small panel per cost, against N (log scale), with
the target as a dashed line; drawn with weftctl graph's own SVG writer."""

import math

from cni_plugin.cli.graph import Svg

PANEL_W, PANEL_H, MARGIN, COLS = 300, 190, 48, 3
COLORS = ("#2b6cb0", "#c05621", "#2f855a")


def _get(point, *path):
    for key in path:
        point = point.get(key) if isinstance(point, dict) else None
    return point


# (title, [(label, path)], target, unit)
PANELS = (
    ("start -> all peers programmed", [("max", ("start_to_programmed_s", "max"))], 5.0, "s"),
    ("new lease -> programmed, churn", [("p50", ("churn", "p50_ms")), ("p99", ("churn", "p99_ms"))], 100.0, "ms"),
    ("agent CPU per reconcile interval, quiet", [("max", ("quiet", "cpu_ms_per_interval", "max"))], 20.0, "ms"),
    ("agent RSS", [("max", ("rss_mib", "max"))], 100.0, "MiB"),
    ("etcd requests per agent per minute", [("quiet", ("quiet", "etcd_requests_per_agent_per_min"))], 1.0, ""),
    ("weftctl leases (all N rows)", [("median", ("weftctl_ms", "leases", "median_ms")),
                                     ("--ttl", ("weftctl_ms", "leases_ttl", "median_ms"))], 1000.0, "ms"),
)


def plot(figure: dict) -> str:
    points = figure["points"]
    sizes = [p["n"] for p in points]
    svg = Svg()
    rows = math.ceil(len(PANELS) / COLS)
    svg.text(MARGIN / 2, 22, f"weft at scale: cost against N nodes ({figure['agents']} real agents, "
             f"reconcile every {figure['reconcile_interval_s']:g} s); dashed: target", size=13, weight="bold")
    for index, (title, series, target, unit) in enumerate(PANELS):
        x0 = MARGIN / 2 + (index % COLS) * (PANEL_W + MARGIN)
        y0 = 40 + (index // COLS) * (PANEL_H + MARGIN)
        _panel(svg, x0, y0, title, series, target, unit, points, sizes)
    width = MARGIN / 2 + COLS * (PANEL_W + MARGIN)
    height = 40 + rows * (PANEL_H + MARGIN)
    return svg.render(width, height)


def _panel(svg, x0, y0, title, series, target, unit, points, sizes):
    left, bottom, top, right = x0 + 44, y0 + PANEL_H - 24, y0 + 22, x0 + PANEL_W - 8
    svg.text(x0, y0 + 12, f"{title} ({unit})" if unit else title, size=11, weight="bold")
    values = [_get(p, *path) for _, path in series for p in points]
    peak = max([v for v in values if v is not None] + [target]) * 1.1 or 1.0
    lo, hi = math.log10(min(sizes)), math.log10(max(sizes))
    span = (hi - lo) or 1.0

    def x_of(n):
        return left + (math.log10(n) - lo) / span * (right - left) if hi > lo else (left + right) / 2

    def y_of(v):
        return bottom - v / peak * (bottom - top)

    svg.line(left, bottom, right, bottom, width=1)
    svg.line(left, bottom, left, top, width=1)
    for frac in (0.0, 0.5, 1.0):
        svg.text(left - 4, y_of(peak * frac) + 4, f"{peak * frac:.3g}", size=9, anchor="end")
    for n in sizes:
        svg.text(x_of(n), bottom + 13, f"{n:,}", size=9, anchor="middle")
    svg.line(left, y_of(target), right, y_of(target), stroke="#c53030", width=1, dash="4 3")
    for (label, path), color in zip(series, COLORS):
        line = [(x_of(p["n"]), y_of(v)) for p in points if (v := _get(p, *path)) is not None]
        for (xa, ya), (xb, yb) in zip(line, line[1:]):
            svg.line(xa, ya, xb, yb, stroke=color, width=1.8)
        for x, y in line:
            svg.circle(x, y, 3, color)
        if line and len(series) > 1:
            svg.text(line[-1][0] - 4, line[-1][1] - 6, label, size=9, fill=color, anchor="end")
