#!/usr/bin/env bash
# run.sh is `make e2e`: it builds what the cluster needs (cached), then for
# each proxy backend starts a fresh cluster (e2e/cluster.sh), installs
# podnet from deploy/ with kubectl apply, runs the upstream sig-network
# e2e tests chosen by $PODNET_E2E_FOCUS and $PODNET_E2E_SKIP, prints one
# line per test and a summary, and tears the cluster down, checking that
# nothing is left.
#
#   PODNET_E2E_BACKENDS  proxy backends to run, default "nftables iptables"
#   PODNET_E2E_SUITE     conformance (default): the [sig-network] [Conformance] tests;
#                        network: every [sig-network] test that can run here (NOT_HERE);
#                        netpol: the NetworkPolicy tests that can run here
#   PODNET_E2E_FOCUS     ginkgo focus, instead of the suite's
#   PODNET_E2E_SKIP      ginkgo skip, instead of the suite's
#   PODNET_E2E_RELIABILITY=0  skip e2e/reliability.sh after the tests
#   PODNET_E2E_KEEP=1    leave the last cluster up (e2e/cluster.sh down removes it)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PODNET_E2E_BIN=${PODNET_E2E_BIN:-$ROOT/.e2e/bin}
export PODNET_E2E_IMAGES=${PODNET_E2E_IMAGES:-$ROOT/.e2e/images}
BACKENDS=${PODNET_E2E_BACKENDS:-nftables iptables}
# NOT_HERE are the tests this machine cannot run, and why (docs/e2e.md
# lists them one by one):
#   [Feature:*]       what the cluster lacks: dual-stack, a cloud load
#                     balancer, Ingress controllers, ... (NetworkPolicy runs
#                     in the netpol suite)
#   SCTP              the kernel has no SCTP sockets for the test pods
#   [Disruptive]      one edits the nodes' iptables over SSH, which the
#                     skeleton provider has no way to do; two delete the
#                     kube-proxy or API server pods, which this cluster does
#                     not have (e2e/reliability.sh kills the proxy instead)
#   [Provider:GCE]    GCE's metadata server
#   Forward PTR lookup  the reverse name of 8.8.8.8 from the Internet
NOT_HERE='\[Feature:|SCTP|\[Disruptive\]|\[Provider:GCE\]|Forward PTR lookup'
case ${PODNET_E2E_SUITE:-conformance} in
conformance) suite_focus='\[sig-network\].*\[Conformance\]' suite_skip='' ;;
network) suite_focus='\[sig-network\]' suite_skip="\\[Conformance\\]|$NOT_HERE" ;;
netpol) suite_focus='\[sig-network\] Netpol' suite_skip='SCTPConnectivity' ;;
*) echo "PODNET_E2E_SUITE=$PODNET_E2E_SUITE: want conformance, network or netpol" >&2; exit 2 ;;
esac
FOCUS=${PODNET_E2E_FOCUS:-$suite_focus}
SKIP=${PODNET_E2E_SKIP:-$suite_skip}
OUT=$ROOT/.e2e/results
STATE=${PODNET_E2E_STATE:-/var/lib/podnet-e2e}
export PODNET_E2E_STATE=$STATE
CLUSTER=$ROOT/e2e/cluster.sh
COREDNS_IMAGE=${PODNET_E2E_COREDNS_IMAGE:-registry.k8s.io/coredns/coredns:v1.13.2}
PHASES=()

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

# phase NAME CMD... runs CMD and records its wall time and outcome. CMD
# runs in a process of its own (this script again), so that set -e stops
# it at its first failing command even though the caller tests it.
phase() {
	local name=$1 t0=$SECONDS rc=0
	shift
	log "phase $name"
	"$0" __run "$@" || rc=$?
	PHASES+=("$(printf '%-28s %4ds %s' "$name" $((SECONDS - t0)) "$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")")")
	return $rc
}

kubectl() { "$CLUSTER" kubectl "$@"; }

build() {
	e2e/build-bins.sh "$PODNET_E2E_BIN"
	make -s image
	e2e/images.sh "$PODNET_E2E_IMAGES" "$PODNET_E2E_BIN"
}

# install BACKEND installs podnet as an operator does, with kubectl apply of
# deploy/, the proxy on BACKEND, then the cluster's DNS, and waits for
# every node and kube-system pod to be ready.
install() {
	local backend=$1
	# The installer's edits deploy/podnet-config.yaml asks for: the API
	# server's address and the proxy backend.
	local f
	for f in deploy/*.yaml; do cat "$f"; echo ---; done |
		sed -e 's|API-SERVER-HOST|172.30.0.2|' \
			-e "s|proxy-backend: \"nftables\"|proxy-backend: \"$backend\"|" |
		kubectl apply -f -
	kubectl -n kube-system rollout status daemonset podnet-agent --timeout 180s
	kubectl -n kube-system rollout status daemonset podnet-service-proxy --timeout 180s
	kubectl wait --for condition=Ready node --all --timeout 180s
	sed "s|COREDNS_IMAGE|$COREDNS_IMAGE|" e2e/manifests/coredns.yaml | kubectl apply -f -
	kubectl -n kube-system rollout status deployment coredns --timeout 180s
}

conformance() {
	local backend=$1 dir=$OUT/$1
	rm -rf "$dir"
	mkdir -p "$dir"
	local rc=0
	"$CLUSTER" cp "$PODNET_E2E_BIN/e2e-network.test" \
		--kubeconfig "$STATE/admin.kubeconfig" --provider skeleton \
		--kubectl-path "$PODNET_E2E_BIN/kubectl" --num-nodes 3 \
		--report-dir "$dir" --ginkgo.no-color --ginkgo.timeout 3h \
		--ginkgo.focus "$FOCUS" ${SKIP:+--ginkgo.skip "$SKIP"} \
		>"$dir/e2e.log" 2>&1 || rc=$?
	go run ./e2e/report -label "$backend" "$dir" | tee "$dir/summary.txt" || true
	return $rc
}

reliability() {
	e2e/reliability.sh "$OUT/$1/reliability" | sed "s/^/$1 /" | tee "$OUT/$1/reliability.txt"
	return "${PIPESTATUS[0]}"
}

one_backend() {
	local backend=$1 rc=0
	if phase "cluster up ($backend)" "$CLUSTER" up && phase "install podnet ($backend)" install "$backend"; then
		phase "conformance ($backend)" conformance "$backend" || rc=1
		if [ "${PODNET_E2E_RELIABILITY:-1}" = 1 ]; then
			phase "reliability ($backend)" reliability "$backend" || rc=1
		fi
	else
		rc=1
	fi
	if [ "${PODNET_E2E_KEEP:-}" != 1 ]; then
		phase "cluster down ($backend)" "$CLUSTER" down || rc=1
	fi
	return $rc
}

main() {
	[ "$(id -u)" = 0 ] || { log "make e2e needs root"; exit 1; }
	# One run at a time: the lock is on this file, so nothing is left.
	exec 9<"$0"
	flock -n 9 || { log "another e2e run is going on"; exit 1; }
	trap '[ "${PODNET_E2E_KEEP:-}" = 1 ] || "$CLUSTER" down >/dev/null 2>&1 || true' EXIT
	"$CLUSTER" check >/dev/null || "$CLUSTER" down
	phase build build || return 1
	local rc=0 b
	for b in $BACKENDS; do
		one_backend "$b" || rc=1
	done
	echo
	for b in $BACKENDS; do cat "$OUT/$b/summary.txt" 2>/dev/null | tail -1; done
	printf '%s\n' "${PHASES[@]}"
	return $rc
}

if [ "${1:-}" = __run ]; then
	shift
	"$@"
	exit
fi
main "$@"
