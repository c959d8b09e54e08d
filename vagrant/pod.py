#!/opt/weft/venv/bin/python
"""pod.py ADD|DEL NETNS -- run /etc/cni/net.d/10-weft.conflist for the namespace NETNS as
a runtime does (lab/cni.py's run_chain, plugins from /opt/cni/bin and /usr/lib/cni);
ADD prints the pod's IPv4 address.  $POD_CONFLIST and $POD_CNI_PATH replace those two
(the test suite runs this helper in scratch namespaces)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lab.cni import run_chain  # noqa: E402

command, netns = sys.argv[1], sys.argv[2]
with open(os.environ.get("POD_CONFLIST", "/etc/cni/net.d/10-weft.conflist")) as handle:
    conflist = json.load(handle)
cni_path = os.environ.get("POD_CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
outcome, result = run_chain(conflist["plugins"], command, conflist, cni_path,
                            container_id=f"vagrant-{netns}", netns=f"/run/netns/{netns}", ifname="eth0",
                            args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={netns}")
if outcome.code != 0:
    sys.exit(f"{command} failed: {outcome}")
if command == "ADD":
    print(result["ips"][0]["address"].split("/")[0])
