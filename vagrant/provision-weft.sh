#!/usr/bin/env bash
# provision-weft.sh NAME IP ETCD [NETWORK_CONFIG] -- a weft node, as docs/operations.md "With
# systemd" says: make deps install, the unit and sysctls, weftd on the lab network, the
# conflist in /etc/cni/net.d; then a pod "smoke" whose address goes to etcd (/weft-smoke/NAME).
set -euo pipefail
name=$1 ip=$2 etcd=$3 network_config=${4:-}
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends make python3 python3-venv etcd-client >/dev/null
cd /weft
make deps install

install -m 0644 conf/weftd.service /etc/systemd/system/weftd.service
install -m 0644 conf/sysctl.d/99-weft.conf /etc/sysctl.d/99-weft.conf
sysctl --system >/dev/null
echo "WEFTD_ARGS=\"--etcd-endpoints $etcd --public-ip $ip --node-name $name\"" > /etc/default/weftd
install -d /etc/cni/net.d
install -m 0644 conf/10-weft.conflist /etc/cni/net.d/10-weft.conflist

if [ -n "$network_config" ]; then
  weftctl network get weft --etcd-endpoints "$etcd" >/dev/null 2>&1 \
    || weftctl network set weft --etcd-endpoints "$etcd" --config "$network_config"
fi
systemctl daemon-reload
systemctl enable --now weftd
for _ in $(seq 60); do
  weftctl status >/dev/null && break
  sleep 1
done
weftctl status

ip netns del smoke 2>/dev/null || true
ip netns add smoke
address=$(vagrant/pod.py ADD smoke)
echo "pod smoke on $name: $address"
ETCDCTL_API=3 etcdctl --endpoints "$etcd" put "/weft-smoke/$name" "$address" >/dev/null
