#!/usr/bin/env bash
# bench/netpol.sh — package policy on the real kernel, one run, tables of
# medians printed as they come (bench/netpol/):
#
#   BenchmarkFirstPacket  new TCP connections per second between two pods
#                         of one bridge that one policy selects, with no
#                         table, 0, 1, 100 and 1000 policies (the others
#                         each selecting another local pod); 7 one-second
#                         samples of each node in turn, medians;
#   BenchmarkProgramming  1k NetworkPolicies x 10k pods (1000 local) in a
#                         real kube-apiserver (kubetest): first and repeated
#                         full sync, rules, kernel memory, and the time from
#                         a NetworkPolicy, Pod or Namespace change's API call
#                         to the first connection it lets through (20 each);
#   BenchmarkNewPod       a new pod from the end of its CNI ADD, 10 pods
#                         without and 10 with the policy socket (ADD waits
#                         for the enforcer): when an allowed client first
#                         gets through, when the pod first reaches an
#                         isolated peer that allows it, how long and how
#                         often an intruder gets through, ADD's wait.
#
# `make deps` builds kube-apiserver into .refbin/ first.
# Usage: sudo bench/netpol.sh            (about 10 minutes on 2 cores)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
exec go test -run '^$' -bench 'BenchmarkFirstPacket|BenchmarkProgramming|BenchmarkNewPod' -benchtime 1x -timeout 60m ./bench/netpol/
