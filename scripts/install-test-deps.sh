#!/usr/bin/env bash
# Debian packages the test suite needs beyond Node.js and npm. Run as root.
# - python3, make, g++: build better-sqlite3 (no prebuilt binaries can be fetched here)
# - podman, runc, busybox-static: container driver tests (images are built locally
#   FROM scratch with a static busybox; there is no registry)
# - prometheus: test/metrics.test.ts runs the real server (not the service) and promtool
# - etcd-server, etcd-client: the etcd store backend's tests run against real etcd members
# - iproute2, nftables, util-linux (nsenter): the chaos suite's network lab
#   (test/helpers/netlab.ts) builds hosts from network namespaces and injects faults
# - conntrack, tcpdump, bind9-dnsutils (dig), iperf3, wireguard-go, wireguard-tools: service
#   networking's lab tests and benchmark (issue 14): flows cut on endpoint removal, the
#   packet capture that must never show plaintext, DNS answers checked by a resolver someone
#   else wrote, and the userspace WireGuard the mesh is measured against
set -euo pipefail
packages=(python3 make g++ podman runc busybox-static prometheus etcd-server etcd-client iproute2 nftables util-linux conntrack tcpdump bind9-dnsutils iperf3 wireguard-go wireguard-tools bubblewrap)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi
