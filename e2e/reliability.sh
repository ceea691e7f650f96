#!/usr/bin/env bash
# reliability.sh disrupts a running e2e cluster with podnet installed (as
# e2e/run.sh leaves it after the conformance tests) and checks, after each
# disruption, that the node network held:
#
#   1. node 1's kubelet and containerd killed (SIGKILL) and restarted;
#   2. podnet-agent and podnet-service-proxy killed (SIGKILL) on every node;
#   3. both DaemonSets upgraded to another image tag (a rolling update);
#   4. every pod of node 1 deleted at once.
#
# Throughout, a prober in the control plane's namespace asks a NodePort
# Service on every node five times a second, and one HTTP keep-alive
# connection through node 1's NodePort carries a request every 200 ms: it
# must survive 1-3 (in 4 its backend may be deleted). After each step:
# every pod Running and Ready; on every node, the host-local leases are
# exactly the addresses of that node's pods in the API and belong to
# sandboxes the runtime has, one veth on the bridge per lease, and routes
# to the other nodes' podCIDRs. It prints one line per check and exits 1
# if one failed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLUSTER=$ROOT/e2e/cluster.sh
NODES=${PODNET_E2E_NODES:-3}
NS=podnet-reliability
OUT=${1:-$ROOT/.e2e/results/reliability}
FAILED=0

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
kubectl() { "$CLUSTER" kubectl "$@"; }
node_ip() { echo "172.30.0.$((10 + $1))"; }
result() { # result OK|FAIL WHAT
	printf '%-4s %s\n' "$1" "$2"
	[ "$1" = OK ] || FAILED=1
}

setup() {
	kubectl create namespace $NS >/dev/null
	# --delay-shutdown: a deleted pod serves 5 s more after SIGTERM, as
	# a workload that drains does; the proxies drop it from the Service
	# meanwhile. Without it a pod refuses before every node has heard of
	# its deletion, whatever the proxy (kube-proxy too).
	kubectl -n $NS create deployment web --replicas 9 \
		--image registry.k8s.io/e2e-test-images/agnhost:2.56 -- /agnhost netexec --http-port 8080 --delay-shutdown 5 >/dev/null
	kubectl -n $NS expose deployment web --type NodePort --port 80 --target-port 8080 >/dev/null
	kubectl -n $NS rollout status deployment web --timeout 120s >/dev/null
	NODEPORT=$(kubectl -n $NS get service web -o jsonpath='{.spec.ports[0].nodePort}')
}

# prober asks every node's NodePort until $OUT/stop exists, one line per
# answer: time, node, ok or fail.
prober() {
	local i
	while [ ! -e "$OUT/stop" ]; do
		for i in $(seq "$NODES"); do
			if "$CLUSTER" cp curl -s -m 1 -o /dev/null "http://$(node_ip "$i"):$NODEPORT/hostname"; then
				echo "$(date +%s.%N) n$i ok"
			else
				echo "$(date +%s.%N) n$i fail"
			fi
		done
		sleep 0.2
	done
}

# keepalive holds one HTTP/1.1 connection to node 1's NodePort and sends
# a request on it every 200 ms until $OUT/stop exists; it prints ok per
# answer and ends with "broken" when the connection fails.
keepalive() {
	"$CLUSTER" cp bash -c '
		exec 3<>"/dev/tcp/$1/$2" || { echo broken; exit; }
		while [ ! -e "$3/stop" ]; do
			printf "GET /hostname HTTP/1.1\r\nHost: web\r\n\r\n" >&3
			read -r -t 2 status <&3 || { echo broken; exit; }
			len=0
			while read -r -t 2 line <&3; do
				line=${line%$'"'"'\r'"'"'}
				[ -z "$line" ] && break
				case $line in Content-Length:*) len=${line#*: } ;; esac
			done
			read -r -t 2 -N "$len" body <&3 || { echo broken; exit; }
			echo "ok $body"
			sleep 0.2
		done' keepalive "$(node_ip 1)" "$NODEPORT" "$OUT"
}

# settle waits until every pod of podnet, CoreDNS and web is Running and
# Ready.
settle() {
	local deadline=$((SECONDS + 180)) ns
	while [ $SECONDS -lt $deadline ]; do
		local ok=1
		for ns in kube-system $NS; do
			kubectl -n $ns wait --for condition=Ready pod --all --timeout 5s >/dev/null 2>&1 &&
				[ -z "$(kubectl -n $ns get pods --no-headers | awk '$3 != "Running"')" ] || ok=0
		done
		[ $ok = 1 ] && return 0
		sleep 1
	done
	return 1
}

# restarts sums the restart counts of podnet's containers.
restarts() {
	kubectl -n kube-system get pods -l app.kubernetes.io/part-of=podnet \
		-o jsonpath='{range .items[*]}{.status.containerStatuses[*].restartCount}{"\n"}{end}' |
		awk '{for (i = 1; i <= NF; i++) n += $i} END {print n + 0}'
}

# invariants checks every node's leases, veths, sandboxes and routes.
# Pods of other namespaces may be starting or ending meanwhile (the e2e
# tests' namespaces go away after the suite): a node's checks are taken
# again until they all hold or 30 s pass, and the last reading counts.
invariants() {
	local step=$1 i lines deadline
	for i in $(seq "$NODES"); do
		deadline=$((SECONDS + 30))
		while lines=$(node_invariants "$step" "$i") && echo "$lines" | grep -q '^FAIL' &&
			[ $SECONDS -lt $deadline ]; do
			sleep 1
		done
		while read -r verdict msg; do
			result "$verdict" "$msg"
		done <<<"$lines"
	done
}

# node_invariants STEP I prints "OK|FAIL message" per check of node I.
node_invariants() {
	local step=$1 i=$2 node=pe2e-n$2 want got sandboxes cidr
	want=$(kubectl get pods -A --field-selector "spec.nodeName=$node" \
		-o jsonpath='{range .items[*]}{.spec.hostNetwork} {.status.podIP}{"\n"}{end}' |
		awk '$1 != "true" && NF {print $NF}' | sort)
	got=$("$CLUSTER" node "$i" sh -c 'ls /var/lib/cni/networks/podnet 2>/dev/null' |
		grep -E '^[0-9]+\.' | sort || true)
	[ "$want" = "$got" ] && echo "OK $step: node $i leases = its pods' addresses ($(echo "$got" | grep -c .))" ||
		echo "FAIL $step: node $i leases [$(echo $got)] != pods [$(echo $want)]"
	# The runtime's containers (sandboxes among them), from its
	# metadata: no shim is asked, so a busy one cannot hide its own.
	sandboxes=$("$CLUSTER" node "$i" ctr --address /run/containerd/containerd.sock -n k8s.io containers ls -q)
	local ip id missing=""
	for ip in $got; do
		# host-local's lease: the container ID, CRLF, the interface.
		id=$("$CLUSTER" node "$i" head -1 "/var/lib/cni/networks/podnet/$ip" | tr -d '\r')
		echo "$sandboxes" | grep -qx "$id" || missing="$missing $ip"
	done
	[ -z "$missing" ] && echo "OK $step: node $i every lease is a sandbox's the runtime has" ||
		echo "FAIL $step: node $i leases of no sandbox:$missing"
	got=$("$CLUSTER" node "$i" ip -o link show master cnio0 type veth 2>/dev/null | grep -c . || true)
	[ "$got" = "$(echo "$want" | grep -c .)" ] && echo "OK $step: node $i veths on cnio0 = pods ($got)" ||
		echo "FAIL $step: node $i $got veths on cnio0, $(echo "$want" | grep -c .) pods"
	local j
	for j in $(seq "$NODES"); do
		[ "$i" = "$j" ] && continue
		cidr=$(kubectl get node "pe2e-n$j" -o jsonpath='{.spec.podCIDR}')
		"$CLUSTER" node "$i" ip route show "$cidr" | grep -q "via $(node_ip "$j")" &&
			echo "OK $step: node $i routes $cidr via node $j" ||
			echo "FAIL $step: node $i has no route to $cidr via node $j"
	done
	return 0
}

# step NAME CMD... runs a disruption, waits for the cluster to settle and
# checks the invariants and the probes of the step.
step() {
	local name=$1 t0=$SECONDS before
	shift
	before=$(grep -c fail "$OUT/probes" || true)
	log "step: $name"
	"$@"
	settle && result OK "$name: every pod Running and Ready ($((SECONDS - t0))s)" ||
		result FAIL "$name: pods not ready after 180s"
	invariants "$name"
	local fails=$(($(grep -c fail "$OUT/probes" || true) - before))
	[ "$fails" = 0 ] && result OK "$name: NodePort answered on every node throughout" ||
		result FAIL "$name: $fails NodePort probes failed"
}

kill_programs() {
	local i p pids killed=0 before deadline=$((SECONDS + 120))
	before=$(restarts)
	for i in $(seq "$NODES"); do
		for p in /podnet-agent /podnet-service-proxy; do
			pids=$("$CLUSTER" pids "$i" "^$p ")
			[ -n "$pids" ] || { result FAIL "no $p process on node $i"; continue; }
			# shellcheck disable=SC2086
			kill -9 $pids
			killed=$((killed + 1))
		done
	done
	# Done when the kubelet has restarted every killed container.
	until [ "$(restarts)" -ge $((before + killed)) ]; do
		[ $SECONDS -lt $deadline ] || { result FAIL "killed containers not restarted"; return; }
		sleep 0.5
	done
}

upgrade() {
	local i
	for i in $(seq "$NODES"); do
		"$CLUSTER" node "$i" ctr --address /run/containerd/containerd.sock -n k8s.io \
			images tag --force docker.io/library/podnet:dev docker.io/library/podnet:upgrade >/dev/null
	done
	kubectl -n kube-system set image daemonset/podnet-agent '*=podnet:upgrade' >/dev/null
	kubectl -n kube-system set image daemonset/podnet-service-proxy '*=podnet:upgrade' >/dev/null
	kubectl -n kube-system rollout status daemonset podnet-agent --timeout 180s >/dev/null
	kubectl -n kube-system rollout status daemonset podnet-service-proxy --timeout 180s >/dev/null
}

delete_node_pods() {
	# kubectl delete returns once the pods are gone (their sandboxes torn
	# down, CNI DEL done); the Deployment has made new ones meanwhile.
	kubectl -n $NS delete pods --field-selector spec.nodeName=pe2e-n1 --timeout 120s >/dev/null
	kubectl -n $NS rollout status deployment web --timeout 120s >/dev/null
}

main() {
	rm -rf "$OUT"
	mkdir -p "$OUT"
	trap 'touch "$OUT/stop"' EXIT # the prober and keep-alive stop with us
	setup
	log "web: 9 pods behind NodePort $NODEPORT"
	prober >"$OUT/probes" &
	local prober_pid=$!
	keepalive >"$OUT/keepalive" &
	local keepalive_pid=$!
	step "baseline" true
	step "restart kubelet+containerd of node 1" "$CLUSTER" restart 1
	step "SIGKILL podnet-agent and podnet-service-proxy" kill_programs
	step "DaemonSets upgraded to podnet:upgrade" upgrade
	if grep -q broken "$OUT/keepalive"; then
		result FAIL "keep-alive connection broke before the pods were deleted ($(grep -c ok "$OUT/keepalive") answers)"
	else
		result OK "keep-alive connection through node 1 lived through 1-3 ($(grep -c ok "$OUT/keepalive") answers)"
	fi
	step "all pods of node 1 deleted" delete_node_pods
	touch "$OUT/stop"
	wait "$prober_pid" "$keepalive_pid" 2>/dev/null || true
	kubectl delete namespace $NS --wait=false >/dev/null
	log "probes: $(grep -c ok "$OUT/probes") answered, $(grep -c fail "$OUT/probes" || true) failed"
	return $FAILED
}

main "$@"
