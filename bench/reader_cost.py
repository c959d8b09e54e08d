"""What one full read of weft's entries costs at N peers: the reconcile's reader
(datapath/owned_dump.py, kernel-filtered dumps decoded by hand) against the same read
through pyroute2 (IPRoute dumps, every attribute decoded).

    python -m bench.reader_cost [--peers 5000] [--rounds 5]

One namespace holds a VXLAN device with N routes of weft's protocol, N permanent
neighbours and N FDB entries (what a node of an N+1-node cluster holds).  Printed: CPU
(process time) and wall time per full read, median of the rounds.  The decision the
figures back is written in datapath/owned_dump.py's docstring.
"""

import argparse
import statistics
import tempfile
import time

from lab.namespaces import Namespace

from cni_plugin.datapath.constants import AF_INET, AF_INET6, NUD_PERMANENT, RT_TABLE_MAIN, WEFT_RTPROT


def populate(node: Namespace, peers: int) -> int:
    node.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])
    node.run(["ip", "addr", "add", "192.168.0.1/16", "dev", "eth0"])
    node.run(["ip", "link", "set", "eth0", "up"])
    node.run(["ip", "link", "add", "weft.1", "type", "vxlan", "id", "1", "local", "192.168.0.1",
              "dstport", "8472", "dev", "eth0", "nolearning"])
    node.run(["ip", "link", "set", "weft.1", "up"])
    ip, bridge = [], []
    for i in range(peers):
        net = f"10.{i // 250}.{i % 250}.0"
        mac = f"0e:77:00:00:{i // 256:02x}:{i % 256:02x}"
        ip.append(f"route add {net}/24 via {net} dev weft.1 onlink proto {WEFT_RTPROT}")
        ip.append(f"neigh add {net} lladdr {mac} dev weft.1 nud permanent")
        bridge.append(f"fdb append {mac} dev weft.1 dst 192.168.{1 + i // 250}.{1 + i % 250} self permanent")
    with tempfile.TemporaryDirectory() as directory:
        for tool, lines in (("ip", ip), ("bridge", bridge)):
            path = f"{directory}/{tool}.batch"
            with open(path, "w") as handle:
                handle.write("\n".join(lines) + "\n")
            node.run([tool, "-batch", path], timeout=300)
    return int(node.ip_json("link", "show", "weft.1")[0]["ifindex"])


def read_by_hand(reader, index: int) -> int:
    return (len(reader.routes(4, proto=WEFT_RTPROT)) + len(reader.permanent_neighbours(index))
            + len(reader.fdb(index)))


def read_through_pyroute2(ipr, index: int) -> int:
    """The same three reads as pyroute2 users write them (decoded into the same values)."""
    import ipaddress

    routes = [(ipaddress.ip_network(f"{m.get('RTA_DST')}/{m['dst_len']}"), m.get("RTA_GATEWAY"), m.get("RTA_OIF"))
              for m in ipr.route("dump", family=AF_INET)
              if m["proto"] == WEFT_RTPROT and m.get("RTA_TABLE", m["table"]) == RT_TABLE_MAIN]
    neighbours = {}
    for family in (AF_INET, AF_INET6):
        for m in ipr.neigh("dump", ifindex=index, family=family):
            if m["ifindex"] == index and m["state"] & NUD_PERMANENT and m.get("NDA_DST"):
                neighbours[ipaddress.ip_address(m.get("NDA_DST"))] = m.get("NDA_LLADDR")
    fdb = {m.get("NDA_LLADDR"): m.get("NDA_DST") for m in ipr.fdb("dump", ifindex=index)
           if m["ifindex"] == index}
    return len(routes) + len(neighbours) + len(fdb)


def measure(read, rounds: int) -> tuple:
    cpu, wall, count = [], [], 0
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        count = read()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall), count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    from pyroute2 import IPRoute

    from cni_plugin.datapath.owned_dump import open_reader

    with Namespace("wbench") as node:
        index = populate(node, args.peers)
        with open_reader(node.path) as reader:
            by_hand = measure(lambda: read_by_hand(reader, index), args.rounds)
        ipr = IPRoute(netns=node.path, flags=0)
        try:
            through = measure(lambda: read_through_pyroute2(ipr, index), args.rounds)
        finally:
            ipr.close()
    print(f"{args.peers} peers, median of {args.rounds} full reads")
    for name, (cpu, wall, count) in (("hand decoder (owned_dump)", by_hand), ("pyroute2 IPRoute", through)):
        print(f"  {name:28} {count:6} entries  cpu {cpu * 1000:7.1f} ms  wall {wall * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
