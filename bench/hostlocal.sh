#!/usr/bin/env bash
# hostlocal.sh: the reference host-local and podnet-host-local run the same
# way — one process per call, same config, a fresh dataDir each — growing to
# N leases (default 1000) with ADD, then DEL of them all. Prints median
# per-call times at several lease counts and the ratio reference/podnet.
# Touches nothing outside a temp dir it creates and removes.
set -euo pipefail
N=${1:-1000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REF=${PODNET_REFBIN:-$ROOT/.refbin}/host-local
TMP=$(mktemp -d /tmp/podnet-hostlocal-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
[ -x "$REF" ] || { echo "reference host-local missing: $REF (run make deps)" >&2; exit 1; }
(cd "$ROOT" && go build -o "$TMP/podnet-host-local" ./examples/podnet-host-local)

# run BIN NAME: ADD N containers then DEL them, recording each call's ns.
run() {
	local bin=$1 name=$2 data="$TMP/data-$2"
	mkdir -p "$data"; chmod 700 "$data"
	local conf='{"cniVersion":"1.0.0","name":"bench","ipam":{"type":"host-local","dataDir":"'"$data"'","ranges":[[{"subnet":"10.200.0.0/16"}]]}}'
	export CNI_NETNS=/dev/null CNI_IFNAME=eth0 CNI_PATH=/nonexistent
	for cmd in ADD DEL; do
		: > "$TMP/$name.$cmd"
		for ((i = 1; i <= N; i++)); do
			local t0=$EPOCHREALTIME
			CNI_COMMAND=$cmd CNI_CONTAINERID=bench$i "$bin" <<<"$conf" >/dev/null
			local t1=$EPOCHREALTIME
			echo "$i $(( (${t1/./} - ${t0/./}) ))" >> "$TMP/$name.$cmd"
		done
	done
}
run "$REF" ref
run "$TMP/podnet-host-local" podnet

# median of column 2 for rows with lease count in [lo, hi]
median() { awk -v lo="$2" -v hi="$3" '$1>=lo && $1<=hi {print $2}' "$1" | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }
printf '%-6s %-12s %14s %14s %8s\n' verb leases host-local podnet ratio
for cmd in ADD DEL; do
	for band in "1 10" "91 110" "491 510" "$((N-19)) $N"; do
		set -- $band
		(( $1 >= 1 && $2 <= N && $1 <= $2 )) || continue
		r=$(median "$TMP/ref.$cmd" "$1" "$2"); p=$(median "$TMP/podnet.$cmd" "$1" "$2")
		# DEL rows count down: lease i is deleted with N-i+1 leases left.
		label="$1-$2"; [ "$cmd" = DEL ] && label="$((N-$2+1))-$((N-$1+1)) left"
		printf '%-6s %-12s %11d µs %11d µs %7.2fx\n' "$cmd" "$label" "$r" "$p" "$(awk -v r="$r" -v p="$p" 'BEGIN{print (p ? r/p : 0)}')"
	done
done
