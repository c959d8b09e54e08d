#!/usr/bin/env bash
# provision-etcd.sh IP -- etcd (Debian's etcd-server) for the lab, listening on IP:2379.
set -euo pipefail
ip=$1
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null
cat > /etc/default/etcd <<CONF
ETCD_NAME=control
ETCD_LISTEN_CLIENT_URLS=http://$ip:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$ip:2379
CONF
systemctl restart etcd
for _ in $(seq 30); do
  ETCDCTL_API=3 etcdctl --endpoints "http://$ip:2379" endpoint health && exit 0
  sleep 1
done
echo "etcd did not become healthy" >&2
exit 1
