"""Single-node demo: two pods on a weft bridge, pinging each other and the gateway.

Everything lives in namespaces made for the run (a 'node' and two 'pods'); the
weft executables are installed into a temporary CNI directory exactly as
`make install` does for /opt/cni/bin, and all of it is removed at the end.
"""

import json
import os
import subprocess
import sys
import tempfile

from lab.cni import invoke
from lab.namespaces import Namespace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def netconf(work: str) -> dict:
    return {
        "cniVersion": "1.1.0",
        "name": "weft-demo",
        "type": "weft",
        "bridge": "cbr0",
        "mtu": 1500,
        "ipMasq": True,
        "dataDir": f"{work}/weft",
        "logFile": f"{work}/weft.log",
        "ipam": {"type": "weft-ipam", "dataDir": f"{work}/ipam",
                 "ranges": [[{"subnet": "10.244.7.0/24"}]]},
    }


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root: it creates network namespaces", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="weft-demo-")
    subprocess.run(["make", "-s", "-C", REPO, "install", f"VENV={sys.prefix}",
                    f"CNI_BIN_DIR={work}/cni", f"BIN_DIR={work}/bin"], check=True,
                   stdout=subprocess.DEVNULL)
    cni_path = f"{work}/cni"
    conf = netconf(work)
    node = Namespace("weft-demo-node")
    pods = {name: Namespace(f"weft-demo-{name}") for name in ("pod-a", "pod-b")}
    ok = True
    try:
        ips = {}
        for name, pod in pods.items():
            out = invoke(f"{cni_path}/weft", "ADD", conf, container_id=name, netns=pod.path,
                         ifname="eth0", cni_path=cni_path, node=node,
                         args=f"K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name}")
            if out.code != 0:
                print(f"ADD {name} failed: {out}")
                return 1
            ips[name] = out.json["ips"][0]["address"].split("/")[0]
            print(f"{name}: eth0 {out.json['ips'][0]['address']} gateway {out.json['ips'][0]['gateway']}")
        gateway = "10.244.7.1"
        print("\nping matrix (from -> to):")
        for src, pod in pods.items():
            for dst, ip in [*ips.items(), ("gateway", gateway)]:
                if dst == src:
                    continue
                done = pod.run(["ping", "-c1", "-W2", ip], check=False).returncode == 0
                ok &= done
                print(f"  {src:6} -> {dst:8} {ip:12} {'ok' if done else 'FAILED'}")
        whois = subprocess.run([f"{work}/bin/weftctl", "whois", ips["pod-b"], "--data-dir",
                                f"{work}/ipam"], capture_output=True, text=True)
        print(f"\nweftctl whois {ips['pod-b']}: {whois.stdout.strip() or whois.stderr.strip()}")
        for name, pod in pods.items():
            out = invoke(f"{cni_path}/weft", "DEL", conf, container_id=name, netns=pod.path,
                         ifname="eth0", cni_path=cni_path, node=node)
            ok &= out.code == 0
        left = [f for f in os.listdir(f"{work}/ipam/weft-demo") if f[0].isdigit()]
        print(f"after DEL: {len(left)} addresses allocated")
        ok &= not left
    finally:
        for ns in (node, *pods.values()):
            ns.delete()
        subprocess.run(["rm", "-rf", work], check=False)
    print(json.dumps({"demo": "single-node", "result": "ok" if ok else "FAILED"}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
