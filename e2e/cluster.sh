#!/usr/bin/env bash
# cluster.sh starts and removes the e2e cluster: a control plane and
# $PODNET_E2E_NODES kubelet + containerd nodes, each in network namespaces
# of its own on one machine, joined by a bridge in a namespace of its own.
#
#   e2e/cluster.sh up        start it (idempotent pieces; fails on a half cluster)
#   e2e/cluster.sh down      stop every process, remove every namespace,
#                            mount, cgroup, directory it made; then check
#   e2e/cluster.sh check     list what is left behind (exit 1 if anything)
#   e2e/cluster.sh node N CMD...   run CMD in node N's namespaces
#   e2e/cluster.sh cp CMD...       run CMD in the control plane's namespace
#   e2e/cluster.sh kubectl ARGS... kubectl as the cluster's admin
#   e2e/cluster.sh restart N       SIGKILL node N's kubelet and containerd, start them again
#   e2e/cluster.sh pids N PATTERN  node N's processes (pods too) matching PATTERN
#
# Nothing runs in, and nothing is added to, the machine's own network
# namespace: the bridge lives in the "switch" namespace, every veth is made
# between two of the cluster's namespaces, and the switch has no uplink, so
# no packet of the cluster can leave the machine (the switch also drops
# anything it would route, as a guard).
#
# Each node has its own mount namespace, as a real node has its own disk:
# /run is a fresh tmpfs, /var/lib, /var/log, /opt and /etc/cni/net.d are
# bound from the node's directory, so hostPath volumes (/opt/cni/bin,
# /etc/cni/net.d, /var/lib/cni, /run/xtables.lock) are the node's own.
# The kubelet's cgroupfs root and every process the cluster starts live
# under the cgroup podnet-e2e, which is how down finds them all.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODES=${PODNET_E2E_NODES:-3}
STATE=${PODNET_E2E_STATE:-/var/lib/podnet-e2e}
BIN=${PODNET_E2E_BIN:-$ROOT/.e2e/bin}
REFBIN=${PODNET_REFBIN:-$ROOT/.refbin}
IMAGES=${PODNET_E2E_IMAGES:-$ROOT/.e2e/images}
CG=podnet-e2e                    # cgroup (every v1 hierarchy) of the cluster
NET=172.30.0                     # the nodes' network, a /24
CP_IP=$NET.2
SERVICE_CIDR=10.96.0.0/16
CLUSTER_CIDR=10.244.0.0/16
DNS_IP=10.96.0.10
PAUSE=registry.k8s.io/pause:3.10.1

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

node_ip() { echo "$NET.$((10 + $1))"; }
node_name() { echo "pe2e-n$1"; }
# node_zone: each node is a zone of its own, so that the topology and
# traffic distribution tests (three zones at least) run.
node_zone() { echo "zone-$1"; }

# cgroups lists the cgroup v1 hierarchies (and the unified one) podnet-e2e
# lives in.
cgroup_dirs() {
	local d
	for d in /sys/fs/cgroup/*/; do
		d=${d%/}
		[ -e "$d/cgroup.procs" ] && echo "$d"
	done
}

# cgroup_make DIR makes cgroup path DIR (relative) in every hierarchy,
# copying cpuset's cpus and mems from the parent as cgroup v1 requires.
cgroup_make() {
	local h p rel=$1 cur=""
	for h in $(cgroup_dirs); do
		cur=$h
		for p in ${rel//\// }; do
			[ -d "$cur/$p" ] || mkdir "$cur/$p"
			if [ -e "$cur/cpuset.cpus" ] && [ -z "$(cat "$cur/$p/cpuset.cpus")" ]; then
				cat "$cur/cpuset.cpus" >"$cur/$p/cpuset.cpus"
				cat "$cur/cpuset.mems" >"$cur/$p/cpuset.mems"
			fi
			cur=$cur/$p
		done
	done
}

# spawn NAME CGROUP NETNS MNTNS CMD... starts CMD in the background, in
# cgroup CGROUP of every hierarchy and the given namespaces (MNTNS may be
# "-"; a node's MNTNS brings the node's UTS namespace, its hostname, with
# it), logging to $STATE/logs/NAME.log. nsenter, not ip netns exec: the
# latter remounts /sys, hiding the cgroup v1 hierarchies from kubelet.
spawn() {
	local name=$1 cg=$2 netns=$3 mntns=$4
	shift 4
	local args=(--net="$STATE/netns/$netns")
	[ "$mntns" = - ] || args+=(--mount="$mntns" --uts="${mntns%/*}/utsns")
	cgroup_make "$cg"
	(
		for h in $(cgroup_dirs); do echo "$BASHPID" >"$h/$cg/cgroup.procs"; done
		exec setsid nsenter "${args[@]}" "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1
	) &
	mkdir -p "$STATE/pids"
	echo $! >"$STATE/pids/$name"
}

# wait_for WHAT SECONDS CMD... polls CMD until it succeeds.
wait_for() {
	local what=$1 secs=$2 deadline
	shift 2
	deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || die "$what: not ready after ${secs}s"
		sleep 0.5
	done
}

# The cluster's network namespaces are files under $STATE/netns (not
# /run/netns, so ip netns list and other programs' leak checks never see
# them): sw, cp, n1...
mkns() {
	mkdir -p "$STATE/netns"
	touch "$STATE/netns/$1"
	unshare --net="$STATE/netns/$1" true
}
in_ns() {
	local ns=$1
	shift
	nsenter --net="$STATE/netns/$ns" "$@"
}
in_cp() { in_ns cp "$@"; }
in_node() {
	local n=$1
	shift
	nsenter --net="$STATE/netns/n$n" --mount="$STATE/n$n/mntns" --uts="$STATE/n$n/utsns" "$@"
}
kubectl() { in_cp "$BIN/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

pki() {
	local d=$STATE/pki
	mkdir -p "$d"
	cd "$d"
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=podnet-e2e-ca \
		-keyout ca.key -out ca.crt 2>/dev/null
	openssl genrsa -out sa.key 2048 2>/dev/null
	openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
	cert apiserver /CN=kube-apiserver \
		"subjectAltName=IP:$CP_IP,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
	cert admin "/O=system:masters/CN=podnet-e2e-admin" ""
	cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" ""
	local i
	for i in $(seq "$NODES"); do
		cert "node$i" "/O=system:nodes/CN=system:node:$(node_name "$i")" ""
	done
	cd - >/dev/null
}

# cert NAME SUBJECT [SAN]: a key and certificate signed by the cluster CA.
cert() {
	local ext=/dev/null
	if [ -n "$3" ]; then
		ext=$1.ext
		echo "$3" >"$ext"
	fi
	openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
	openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
		-extfile "$ext" -out "$1.crt" 2>/dev/null
}

# kubeconfig FILE CERTNAME writes a kubeconfig for the API server as the
# holder of pki/CERTNAME.
kubeconfig() {
	local p=$STATE/pki
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://$CP_IP:6443
    certificate-authority-data: $(base64 -w0 "$p/ca.crt")
users:
- name: u
  user:
    client-certificate-data: $(base64 -w0 "$p/$2.crt")
    client-key-data: $(base64 -w0 "$p/$2.key")
contexts:
- name: e2e
  context: {cluster: e2e, user: u}
current-context: e2e
EOF
}

network() {
	mkns sw
	in_ns sw ip link set lo up
	in_ns sw ip link add br0 type bridge
	in_ns sw ip addr add $NET.1/24 dev br0
	in_ns sw ip link set br0 up
	# The guard: the switch routes nothing (there is nowhere to route to,
	# and it says so in the kernel).
	in_ns sw sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0
	# Frames between the nodes are bridged and must not meet the guard.
	in_ns sw sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
		net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0
	printf 'table inet guard {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n }\n}\n' |
		in_ns sw nft -f -
	attach cp $CP_IP
	local i
	for i in $(seq "$NODES"); do
		attach "n$i" "$(node_ip "$i")"
	done
}

# attach NAME IP makes namespace NAME with eth0 on the switch's bridge.
attach() {
	local ns=$1
	mkns "$ns"
	in_ns sw ip link add "$ns" type veth peer name eth0 netns "$STATE/netns/$ns"
	in_ns sw ip link set "$ns" master br0 up
	in_ns "$ns" ip link set lo up
	in_ns "$ns" ip addr add "$2/24" dev eth0
	in_ns "$ns" ip link set eth0 up
	in_ns "$ns" ip route add default via $NET.1
}

control_plane() {
	mkdir -p "$STATE/cp"
	kubeconfig "$STATE/admin.kubeconfig" admin
	spawn etcd $CG/cp cp - etcd --data-dir "$STATE/cp/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --log-level warn
	local p=$STATE/pki
	spawn kube-apiserver $CG/cp cp - "$REFBIN/kube-apiserver" \
		--etcd-servers http://127.0.0.1:2379 \
		--bind-address 0.0.0.0 --advertise-address $CP_IP --secure-port 6443 \
		--tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
		--client-ca-file "$p/ca.crt" \
		--kubelet-client-certificate "$p/apiserver-kubelet-client.crt" \
		--kubelet-client-key "$p/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types InternalIP,Hostname \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-cluster-ip-range $SERVICE_CIDR --allow-privileged --profiling=false
	wait_for kube-apiserver 120 kubectl get --raw /readyz
	spawn kube-controller-manager $CG/cp cp - "$BIN/kube-controller-manager" \
		--kubeconfig "$STATE/admin.kubeconfig" --leader-elect=false \
		--allocate-node-cidrs --cluster-cidr $CLUSTER_CIDR --node-cidr-mask-size 24 \
		--service-cluster-ip-range $SERVICE_CIDR \
		--service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
		--use-service-account-credentials --controllers '*' --profiling=false
	spawn kube-scheduler $CG/cp cp - "$BIN/kube-scheduler" \
		--kubeconfig "$STATE/admin.kubeconfig" --leader-elect=false --profiling=false
	wait_for "default service account" 120 kubectl -n default get serviceaccount default
}

# node_fs N gives node N its mount namespace, a file system of its own
# where a node keeps state, its configuration, and a UTS namespace whose
# hostname is the node's name: hostNetwork pods share it, and tests ask
# them for the node's name.
node_fs() {
	local n=$1 d=$STATE/n$1
	mkdir -p "$d"/{var-lib,var-log,opt,etc-cni}/ "$d/var-lib/kubelet" "$d/var-lib/containerd"
	touch "$d/utsns"
	unshare --uts="$d/utsns" hostname "$(node_name "$n")"
	touch "$d/mntns"
	unshare --mount="$d/mntns" --propagation private true
	# /var/lib last: it hides $STATE inside the node.
	nsenter --mount="$d/mntns" sh -ec "
		mount -t tmpfs -o mode=755 tmpfs /run
		mount --bind '$d/var-log' /var/log
		mount --bind '$d/opt' /opt
		mount --bind '$d/etc-cni' /etc/cni
		mount --bind '$d/var-lib' /var/lib
		mkdir -p /etc/cni/net.d /opt/cni/bin"
	node_config "$n"
}

node_config() {
	local n=$1 d=$STATE/n$1/var-lib
	cat >"$d/containerd/config.toml" <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE"
  # Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj
  # below its own, which the kubelet asks for sandboxes.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  # No registry is reachable: a missing image fails at once.
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."*"]
    endpoint = ["http://127.0.0.1:1"]
[plugins."io.containerd.internal.v1.opt"]
  path = "/opt/containerd"
EOF
	kubeconfig "$d/kubelet/kubeconfig" "node$n"
	cp "$STATE/pki/ca.crt" "$d/kubelet/ca.crt"
	echo "nameserver $NET.1" >"$d/kubelet/resolv.conf"
	cat >"$d/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /$CG/n$n
failCgroupV1: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: /var/lib/kubelet/ca.crt}
# Any client with a certificate of the cluster's CA (the API server's).
authorization: {mode: AlwaysAllow}
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: /var/lib/kubelet/resolv.conf
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
failSwapOn: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
rotateCertificates: false
EOF
}

start_node() {
	start_containerd "$1"
	import_images "$1"
	start_kubelet "$1"
}

start_containerd() {
	local n=$1
	spawn "containerd-n$n" "$CG/n$n-system" "n$n" "$STATE/n$n/mntns" \
		containerd --config /var/lib/containerd/config.toml
	wait_for "containerd on node $n" 60 in_node "$n" ctr --address /run/containerd/containerd.sock version
}

start_kubelet() {
	local n=$1
	cgroup_make "$CG/n$n" # the kubelet's cgroupRoot must exist
	spawn "kubelet-n$n" "$CG/n$n-system" "n$n" "$STATE/n$n/mntns" "$BIN/kubelet" \
		--config /var/lib/kubelet/config.yaml --kubeconfig /var/lib/kubelet/kubeconfig \
		--hostname-override "$(node_name "$n")" --node-ip "$(node_ip "$n")" \
		--node-labels "topology.kubernetes.io/zone=$(node_zone "$n")" --v=1
}

# restart N kills node N's kubelet and containerd with SIGKILL (their
# containers and shims go on) and starts them again.
restart() {
	local n=$1 p pid
	for p in kubelet containerd; do
		pid=$(cat "$STATE/pids/$p-n$n")
		kill -9 "$pid"
		wait_for "$p of node $n to die" 10 sh -c "! kill -0 $pid"
	done
	start_containerd "$n"
	start_kubelet "$n"
}

# node_pids N PATTERN lists the processes of node N (its pods included)
# whose command line matches PATTERN.
node_pids() {
	local pid
	for pid in $(pgrep -f "$2" || true); do
		grep -q "/$CG/n$1[/-]" "/proc/$pid/cgroup" 2>/dev/null && echo "$pid"
	done
	return 0
}

# import_images N loads every image tarball into node N's containerd.
import_images() {
	local f
	for f in "$IMAGES"/*.tar "$ROOT/bin/podnet-image.tar"; do
		[ -e "$f" ] || continue
		in_node "$1" ctr --address /run/containerd/containerd.sock -n k8s.io \
			images import --no-unpack=false "$f" >/dev/null
	done
}

pod_cidr() {
	local c
	c=$(kubectl get node "$(node_name "$1")" -o jsonpath='{.spec.podCIDR}')
	[ -n "$c" ] && echo "$c"
}

# pod_routes gives the control plane a route to each node's podCIDR, so
# the API server reaches pods (its proxy subresource does).
pod_routes() {
	local i cidr
	for i in $(seq "$NODES"); do
		wait_for "podCIDR of node $i" 120 pod_cidr "$i"
		cidr=$(pod_cidr "$i")
		in_cp ip route replace "$cidr" via "$(node_ip "$i")"
	done
}

up() {
	[ ! -e "$STATE" ] || die "$STATE exists: run '$0 down' first"
	local t0=$SECONDS
	mkdir -p "$STATE/logs"
	mount --bind "$STATE" "$STATE"
	mount --make-private "$STATE"
	if [ ! -d /etc/cni ]; then
		mkdir -p /etc/cni
		touch "$STATE/made-etc-cni"
	fi
	pki
	network
	control_plane
	log "control plane ready ($((SECONDS - t0))s)"
	local i
	for i in $(seq "$NODES"); do
		node_fs "$i"
		start_node "$i"
	done
	for i in $(seq "$NODES"); do
		wait_for "node $i registered" 120 kubectl get node "$(node_name "$i")"
	done
	pod_routes
	log "cluster up: $NODES nodes ($((SECONDS - t0))s)"
}

# procs lists every process in the cluster's cgroups.
procs() {
	local h
	for h in $(cgroup_dirs); do
		[ -d "$h/$CG" ] && find "$h/$CG" -name cgroup.procs -exec cat {} + 2>/dev/null
	done | sort -u
}

down() {
	local t0=$SECONDS deadline pids
	deadline=$((SECONDS + 60))
	# Kill until nothing is left: containerd's shims and the containers
	# are in the same subtree as the kubelets that started them.
	while pids=$(procs) && [ -n "$pids" ]; do
		# shellcheck disable=SC2086
		kill -9 $pids 2>/dev/null || true
		[ $SECONDS -lt $deadline ] || die "processes survive: $pids"
		sleep 0.2
	done
	local h
	for h in $(cgroup_dirs); do
		[ -d "$h/$CG" ] && find "$h/$CG" -depth -type d -exec rmdir {} +
	done
	local d
	for d in "$STATE"/n*/mntns "$STATE"/n*/utsns; do
		[ -e "$d" ] && { umount "$d" 2>/dev/null || true; }
	done
	for d in "$STATE"/netns/*; do
		[ -e "$d" ] && { umount "$d" 2>/dev/null || true; }
	done
	if [ -e "$STATE" ]; then
		[ -e "$STATE/made-etc-cni" ] && rm -rf /etc/cni
		umount "$STATE" 2>/dev/null || true
		rm -rf "$STATE"
	fi
	log "cluster down ($((SECONDS - t0))s)"
	check
}

# check prints what the cluster left behind: processes, cgroups, network
# namespaces, mounts, files. Empty output and exit 0 mean nothing.
check() {
	local left=0 h
	if [ -n "$(procs)" ]; then echo "left: processes $(procs | tr '\n' ' ')"; left=1; fi
	for h in $(cgroup_dirs); do
		if [ -d "$h/$CG" ]; then echo "left: cgroup $h/$CG"; left=1; fi
	done
	if grep -q -e "$STATE" -e podnet-e2e /proc/self/mountinfo; then echo "left: mounts"; grep -e "$STATE" /proc/self/mountinfo; left=1; fi
	if [ -e "$STATE" ]; then echo "left: $STATE"; left=1; fi
	return $left
}

case ${1:-} in
up) up ;;
down) down ;;
check) check ;;
node) n=$2; shift 2; in_node "$n" "$@" ;;
restart) restart "$2" ;;
pids) node_pids "$2" "$3" ;;
cp) shift; in_cp "$@" ;;
kubectl) shift; kubectl "$@" ;;
*) sed -n '2,15p' "$0"; exit 2 ;;
esac
