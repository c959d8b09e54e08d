#!/usr/bin/env bash
# smoke.sh ETCD NAME -- from this VM's pod "smoke", ping the pod of every other VM
# (addresses published in etcd under /weft-smoke/ by provision-weft.sh).
set -euo pipefail
etcd=$1 self=$2
failed=0
while read -r key && read -r address; do
  node=${key##*/}
  [ "$node" = "$self" ] && continue
  if ip netns exec smoke ping -c 3 -W 2 "$address" >/dev/null; then
    echo "smoke: $self -> $node ($address) ok"
  else
    echo "smoke: $self -> $node ($address) FAILED"
    failed=1
  fi
done < <(ETCDCTL_API=3 etcdctl --endpoints "$etcd" get --prefix /weft-smoke/)
weftctl leases --etcd-endpoints "$etcd"
exit $failed
