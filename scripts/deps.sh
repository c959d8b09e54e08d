#!/usr/bin/env bash
# Install what weft's tests and demo need on a Debian 12 machine: Debian packages
# (only those missing, so a second run costs a dpkg query) and the Python venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(iproute2 nftables libnftables1 containernetworking-plugins etcd-server etcd-client
          wireguard-go wireguard-tools tcpdump  # the wireguard backend, its tests, its bench
          podman containerd runc busybox-static iputils-ping iperf3 iptables python3-venv make
          docker.io docker-compose mmdebstrap vagrant vagrant-libvirt shellcheck
          golang-go golang-github-appc-cni-dev
          nfdump conntrack  # flow records: the IPFIX collector (nfcapd, nfdump) and the kernel's view
          systemd)  # systemd-analyze verifies conf/weftd.service
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
