#!/usr/bin/env bash
# bench/bridge-cni.sh — podnet-bridge against the reference bridge+host-local.
#
# Both plugins are driven the same way, through the pinned cnitool, with the
# article's configuration (isGateway, ipMasq, host-local IPAM), each in its
# own throwaway node namespace, pods 1..N added and then deleted with the
# two plugins' calls interleaved. It prints the median ADD and DEL latency of
# each, their ratio, and how the ADD latency of the last 10 % of pods
# compares with the first 10 %.
#
# That last ratio is also measured a second way, immune to the machine
# getting faster or slower during the run (a shared VM does both; the
# floor below shows by how much): while the last 10 % of pods are added to
# the full node, each ADD alternates with one to a second, empty node, so
# "first 10 %" and "last 10 %" are measured side by side.
#
# Usage: sudo bench/bridge-cni.sh [PODS]   (default 500; needs `make deps`)
#
# With PODNET_BENCH_RAW=FILE it also writes every measurement there, one
# line per pod: "pod add_ref add_podnet add_floor del_ref del_podnet
# del_floor", in microseconds, then "empty pod add_ref add_podnet
# add_floor" for the ADDs to the empty nodes.
#
# The plugins run in the node namespace through nsenter --net (the way a
# runtime's process sits in a namespace), not ip netns exec, whose private
# mount namespace copies every netns mount and so slows down as pods are
# added, for reasons that have nothing to do with either plugin.
#
# Everything happens inside a private mount namespace with a tmpfs over
# /var/lib (cnitool's result cache) and inside namespaces this script makes:
# nothing of the machine's own network is touched, nothing is left behind.
set -euo pipefail
PODS=${1:-500}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REFBIN=${PODNET_REFBIN:-$ROOT/.refbin}
for b in cnitool bridge host-local; do
	[ -x "$REFBIN/$b" ] || { echo "missing $REFBIN/$b: run make deps" >&2; exit 1; }
done

if [ "${PODNET_BENCH_INNER:-}" != 1 ]; then
	GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
	WORK=$(mktemp -d /tmp/podnet-bench.XXXXXX)
	trap 'rm -rf "$WORK"' EXIT
	mkdir -p "$WORK/bin"
	(cd "$ROOT" && "$GO" build -o "$WORK/bin/podnet-bridge" ./examples/podnet-bridge &&
		"$GO" build -o "$WORK/bin/nopcni" ./bench/nopcni)
	cp "$REFBIN/bridge" "$REFBIN/host-local" "$REFBIN/cnitool" "$WORK/bin/"
	# A private mount namespace: cnitool's cache and the named namespaces
	# below vanish with it, even if this script is killed.
	PODNET_BENCH_INNER=1 WORK=$WORK unshare --mount --propagation private "$0" "$PODS"
	exit
fi

mount -t tmpfs podnet-bench /var/lib
mkdir -p /run/netns
mount -t tmpfs podnet-bench-netns /run/netns
BIN=$WORK/bin
export CNI_PATH=$BIN NETCONFPATH=$WORK/conf
mkdir -p "$NETCONFPATH"

conf() { # NAME TYPE SUBNET DATADIR
	# The network's lease directory is made now, as on a node that has run
	# pods before, so every plugin and node gets one made at the same moment:
	# where ext4 puts a directory, and which inodes near it were deleted
	# lately, changes what creating a lease file costs.
	mkdir -p "$4/$1"
	cat >"$NETCONFPATH/$1.conf" <<JSON
{"cniVersion":"1.0.0","name":"$1","type":"$2","bridge":"cnio0","isGateway":true,"ipMasq":true,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"$3"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"$4"}}
JSON
}
conf ref bridge 10.200.0.0/16 "$WORK/data-ref"
conf pod podnet-bridge 10.201.0.0/16 "$WORK/data-pod"
conf nop nopcni 10.202.0.0/16 "$WORK/data-nop"
# The empty second node of each plugin, with its own IPAM directory.
conf ref2 bridge 10.200.0.0/16 "$WORK/data-ref2"
conf pod2 podnet-bridge 10.201.0.0/16 "$WORK/data-pod2"
conf nop2 nopcni 10.202.0.0/16 "$WORK/data-nop2"

cleanup() {
	for ns in $(ip netns list | awk '/^pb-/{print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT
for n in pb-node-ref pb-node-pod pb-node-nop pb-empty-ref pb-empty-pod pb-empty-nop; do
	ip netns add $n
	ip -n $n link set lo up
done

now() { date +%s%N; }
declare -a add_ref add_pod del_ref del_pod add_nop del_nop empty_ref empty_pod empty_nop
K=$(( (PODS + 9) / 10 )) # pods in a tenth
run() { # NODE NET OP POD → prints ns
	local t0 t1
	t0=$(now)
	nsenter --net="/run/netns/$1" "$BIN/cnitool" "$3" "$2" "/run/netns/$4" >/dev/null
	t1=$(now)
	echo $(( (t1 - t0) / 1000 ))
}

echo "adding $PODS pods per plugin (interleaved)..." >&2
for i in $(seq 1 "$PODS"); do
	ip netns add "pb-r$i"; ip netns add "pb-p$i"
	add_ref+=("$(run pb-node-ref ref add "pb-r$i")")
	add_pod+=("$(run pb-node-pod pod add "pb-p$i")")
	add_nop+=("$(run pb-node-nop nop add "pb-r$i")")
	if [ "$i" -gt $((PODS - K)) ]; then
		ip netns add "pb-er$i"; ip netns add "pb-ep$i"
		empty_ref+=("$(run pb-empty-ref ref2 add "pb-er$i")")
		empty_pod+=("$(run pb-empty-pod pod2 add "pb-ep$i")")
		empty_nop+=("$(run pb-empty-nop nop2 add "pb-er$i")")
	fi
done
rules_ref=$(nsenter --net=/run/netns/pb-node-ref iptables-save -t nat | grep -c '^-A' || true)
rules_pod=$(nsenter --net=/run/netns/pb-node-pod iptables-save -t nat | grep -c '^-A' || true)
echo "deleting..." >&2
for i in $(seq 1 "$PODS"); do
	del_ref+=("$(run pb-node-ref ref del "pb-r$i")")
	del_pod+=("$(run pb-node-pod pod del "pb-p$i")")
	del_nop+=("$(run pb-node-nop nop del "pb-r$i")")
done

if [ -n "${PODNET_BENCH_RAW:-}" ]; then
	for i in $(seq 0 $((PODS - 1))); do
		echo "$((i + 1)) ${add_ref[$i]} ${add_pod[$i]} ${add_nop[$i]} ${del_ref[$i]} ${del_pod[$i]} ${del_nop[$i]}"
	done >"$PODNET_BENCH_RAW"
	for i in $(seq 0 $((K - 1))); do
		echo "empty $((i + 1)) ${empty_ref[$i]} ${empty_pod[$i]} ${empty_nop[$i]}"
	done >>"$PODNET_BENCH_RAW"
fi

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
tenth() { # first|last VALUES...
	local which=$1; shift
	local n=$# k=$(( ($# + 9) / 10 ))
	if [ "$which" = first ]; then median "${@:1:$k}"; else median "${@:$((n - k + 1)):$k}"; fi
}
ms() { awk -v u="$1" 'BEGIN{printf "%.2f", u/1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }

ar=$(median "${add_ref[@]}"); ap=$(median "${add_pod[@]}")
dr=$(median "${del_ref[@]}"); dp=$(median "${del_pod[@]}")
printf '\n%-26s %12s %12s %8s\n' "pods=$PODS (median, ms)" reference podnet ratio
printf '%-26s %12s %12s %8s\n' "ADD" "$(ms "$ar")" "$(ms "$ap")" "$(ratio "$ap" "$ar")"
printf '%-26s %12s %12s %8s\n' "DEL" "$(ms "$dr")" "$(ms "$dp")" "$(ratio "$dp" "$dr")"
fr=$(tenth first "${add_ref[@]}"); lr=$(tenth last "${add_ref[@]}")
fp=$(tenth first "${add_pod[@]}"); lp=$(tenth last "${add_pod[@]}")
fn=$(tenth first "${add_nop[@]}"); ln=$(tenth last "${add_nop[@]}")
printf '%-26s %12s %12s   (harness floor: %s)\n' "ADD last10%/first10%" "$(ratio "$lr" "$fr")" "$(ratio "$lp" "$fp")" "$(ratio "$ln" "$fn")"
er=$(median "${empty_ref[@]}"); ep=$(median "${empty_pod[@]}"); en=$(median "${empty_nop[@]}")
printf '%-26s %12s %12s   (harness floor: %s)\n' "  same, side by side" "$(ratio "$lr" "$er")" "$(ratio "$lp" "$ep")" "$(ratio "$ln" "$en")"
printf '%-26s %12s %12s\n' "nat rules at $PODS pods" "$rules_ref" "$rules_pod"
printf '%-26s %12s / %s\n' "harness floor ADD / DEL" "$(ms "$(median "${add_nop[@]}")")" "$(ms "$(median "${del_nop[@]}")")"
echo "(floor: a plugin that does nothing, through the same cnitool and nsenter;"
echo " side by side: the last 10 % against ADDs to an empty node made in alternation with them)"
