#!/usr/bin/env bash
# bench/service.sh — the service proxy's two backends side by side, in one
# run, each in throwaway namespaces:
#
#   BenchmarkModes       full sync, one-Service partial syncs (add, change
#                        endpoints, delete; median of 10 each) and the kernel
#                        memory of the rules, nftables and iptables, at 1k,
#                        10k and 30k Services × 5 endpoints; for nftables also
#                        what one goto element costs once a verdict map holds
#                        one per Service (the layout not chosen);
#   BenchmarkSlowPaths   at 10k Services, both backends: a restarted proxy's
#                        full sync into populated tables, a partial sync
#                        bringing a new endpoint count, turning affinity on,
#                        1000 Services in one sync, Verify, and a UDP
#                        endpoint removal with 100k conntrack flows;
#   BenchmarkFirstPacket new TCP connections per second to one Service
#                        through the rules at 100 and 10k Services;
#   BenchmarkSync        the iptables backend's full sync against the
#                        iptables-restore floor at 1k and 10k.
#
# Usage: sudo bench/service.sh            (about 10 minutes on 2 cores)
#        PODNET_BENCH_SIZES=1000,10000 sudo bench/service.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
exec go test -run '^$' -bench 'BenchmarkModes|BenchmarkSlowPaths|BenchmarkFirstPacket|BenchmarkSync$' -benchtime 1x -timeout 60m ./service/
