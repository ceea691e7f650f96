#!/usr/bin/env bash
# bench/service.sh — the service proxy's full and partial sync against the
# iptables-restore floor, at 1k and 10k Services × 5 endpoints.
#
# Runs service's BenchmarkSync once per size. Each size loads the proxy's
# table with one flush-mode iptables-restore into an empty throwaway
# namespace (the floor), then makes a new Proxy's full sync into another
# one, then times 20 one-Service partial syncs. It prints floor, full sync,
# full/floor (target ≤ 1.3) and the mean partial sync (target at 10k:
# ≤ 100 ms). Everything happens in namespaces the benchmark creates.
#
# Usage: sudo bench/service.sh            (about a minute on 2 cores)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
exec go test -run '^$' -bench 'BenchmarkSync' -benchtime 1x -timeout 20m ./service/
