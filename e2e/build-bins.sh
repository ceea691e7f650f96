#!/usr/bin/env bash
# build-bins.sh [OUTDIR] builds the e2e cluster's upstream programs from the
# pinned modules in tools/kubernetes and tools/coredns into OUTDIR (default:
# .e2e/bin in the repository):
#
#   kubelet kube-controller-manager kube-scheduler kubectl   Kubernetes v1.34.2
#   agnhost                                                   the e2e test image's program
#   regression-issue-74839                                    the Conntrack invalid-state test's server
#   e2e-network.test                                          the sig-network e2e suite
#   coredns                                                   CoreDNS with the kube-dns plugins
#
# Every binary is static (CGO_ENABLED=0), as upstream releases them: they run
# in any node namespace and in images that have no libc. A binary is rebuilt
# only when its inputs changed: its module's go.mod and go.sum, the Go files
# of the package built from the module's own tree, this script, the Go
# toolchain or the flags (a hash in OUTDIR/.stamps). It prints one line per
# binary with the time it took.
#
# KUBE_LDFLAGS may be set (the Makefile's); by default it stamps KUBE_VERSION
# (v1.34.2) as the version the Kubernetes programs report.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/.e2e/bin}
go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

KUBE_VERSION=${KUBE_VERSION:-v1.34.2}
minor=${KUBE_VERSION#v1.}
minor=${minor%%.*}
KUBE_LDFLAGS=${KUBE_LDFLAGS:-"-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"}
COREDNS_LDFLAGS="-s -w"

export CGO_ENABLED=0

# inputs_hash DIR SRC ARGS... hashes what a build in module DIR depends on:
# go.mod, go.sum, the Go files under DIR/SRC (none if SRC is -) and ARGS.
inputs_hash() {
	local dir=$1 src=$2
	shift 2
	{
		sha256sum "$dir/go.mod" "$dir/go.sum"
		if [[ $src != - ]]; then
			(cd "$dir" && find "$src" -type f -name '*.go' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
		fi
		sha256sum "$root/e2e/build-bins.sh"
		"$go" version
		echo "CGO_ENABLED=$CGO_ENABLED $*"
	} | sha256sum | cut -d' ' -f1
}

# build NAME DIR SRC MODE LDFLAGS PKG writes OUTDIR/NAME from package PKG of
# module DIR, with go build (MODE build) or go test -c (MODE test), unless
# the stamp of NAME shows the same inputs. SRC is as for inputs_hash.
build() {
	local name=$1 dir=$root/$2 src=$3 mode=$4 ldflags=$5 pkg=$6
	local stamp=$out/.stamps/$name hash start cmd
	case $mode in
	build) cmd=("$go" build) ;;
	test) cmd=("$go" test -c) ;;
	esac
	cmd+=(-trimpath -buildvcs=false -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg")
	hash=$(inputs_hash "$dir" "$src" "${cmd[@]}")
	if [[ -x $out/$name && -f $stamp && $(<"$stamp") == "$hash" ]]; then
		printf '%-24s up to date\n' "$name"
		return
	fi
	rm -f "$stamp"
	start=$SECONDS
	(cd "$dir" && "${cmd[@]}") || {
		echo "build-bins: building $name failed" >&2
		return 1
	}
	mv -f "$out/$name.tmp" "$out/$name"
	echo "$hash" >"$stamp"
	printf '%-24s built in %ds\n' "$name" $((SECONDS - start))
}

mkdir -p "$out/.stamps"

for cmd in kubelet kube-controller-manager kube-scheduler kubectl; do
	build "$cmd" tools/kubernetes - build "$KUBE_LDFLAGS" "k8s.io/kubernetes/cmd/$cmd"
done

# agnhost reports the version of the e2e image it is built for, as upstream's
# test/images/agnhost/Makefile stamps it (2.56 at v1.34.2).
agnhost=k8s.io/kubernetes/test/images/agnhost
agnhost_version=$(<"$(cd "$root/tools/kubernetes" && "$go" list -f '{{.Dir}}' "$agnhost")/VERSION")
build agnhost tools/kubernetes - build "-s -w -X main.Version=$agnhost_version" "$agnhost"

# The server of "proxy implementation should not be vulnerable to the
# invalid conntrack state bug": it answers with an out-of-window packet.
build regression-issue-74839 tools/kubernetes - build "-s -w" k8s.io/kubernetes/test/images/regression-issue-74839

build e2e-network.test tools/kubernetes e2enetwork test "$KUBE_LDFLAGS" ./e2enetwork
build coredns tools/coredns . build "$COREDNS_LDFLAGS" .
