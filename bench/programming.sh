#!/usr/bin/env bash
# bench/programming.sh — network programming latency through a real
# kube-apiserver: podnet-service-proxy (--backend nftables and iptables)
# and, side by side in the same run, kube-proxy v1.34.2 (iptables and
# nftables modes, up to --kube-proxy-max-services, default 1000).
#
# For each size: N Services x 5 endpoints loaded through the API, each
# proxy started in a throwaway namespace with a minimum sync period of 0,
# its first full sync awaited, then 200 EndpointSlice changes 300 ms
# apart; it prints the p50/p90/p99 and mean latency from the
# last-change-trigger-time annotation to the end of the sync that applied
# the change (each proxy's own metric), the mean sync, the time of the
# first sync and the proxy's RSS. `make deps` builds kube-apiserver and
# kube-proxy into .refbin/ first.
#
# Usage: sudo bench/programming.sh [--services 1000,10000] [--updates 200] [--interval 300ms] ...
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
make -s deps build "$ROOT/.refbin/kube-proxy" >/dev/null
go build -o bin/podnet-bench-programming ./bench/programming
exec bin/podnet-bench-programming --proxy bin/podnet-service-proxy --kube-proxy .refbin/kube-proxy "$@"
