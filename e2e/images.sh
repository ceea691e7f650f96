#!/usr/bin/env bash
# images.sh OUTDIR BINDIR [IMAGE...]: builds, without a registry, the
# container images the upstream sig-network e2e tests (v1.34.2) run, one
# docker-archive tarball each in OUTDIR, tagged with the exact names the
# e2e binary asks for (test/utils/image/manifest.go), ready for
# `ctr -n k8s.io images import OUTDIR/NAME.tar`. Without IMAGE, all of
# these are built:
#
#   pause.tar            registry.k8s.io/pause:3.10.1             build/pause/linux/pause.c, gcc -static
#   agnhost.tar          registry.k8s.io/e2e-test-images/agnhost:2.56
#                        BINDIR/agnhost and the tools tests exec in agnhost pods:
#                        busybox (sh, seq, ...), curl, wget, nc (OpenBSD), dig,
#                        nslookup, host, getent, ip, ss, and BINDIR/coredns as /coredns
#   busybox.tar          registry.k8s.io/e2e-test-images/busybox:1.37.0-1
#   jessie-dnsutils.tar  registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7
#                        busybox, dig, nslookup, host, getent
#   nginx.tar            registry.k8s.io/e2e-test-images/nginx:1.14-4  (port 80)
#   regression-issue-74839.tar  registry.k8s.io/e2e-test-images/regression-issue-74839:1.2
#                        BINDIR/regression-issue-74839 (the Conntrack test's boom server)
#   distroless-iptables.tar  registry.k8s.io/build-image/distroless-iptables:v0.7.11
#                        conntrack and busybox (sh, grep, sleep): the KubeProxy
#                        CLOSE_WAIT test reads the node's conntrack table with it
#   coredns.tar          $COREDNS_TAG (default: registry.k8s.io/coredns/coredns:v<BINDIR/coredns -version>)
#
# and on request (`make image` asks for it):
#
#   podnet-image.tar     podnet:dev: BINDIR/podnet-agent, podnet-service-proxy,
#                        podnet-bridge, podnet-host-local, portmap and loopback
#                        in /, iptables (nft and legacy) in /usr/sbin; no shell
#
# BINDIR holds the static binaries named above. The userland comes from
# Debian packages fetched with `apt-get download` into CACHE/debs and
# unpacked with dpkg-deb into CACHE/sysroot (CACHE is $IMAGES_CACHE, by
# default OUTDIR/cache); a dynamically linked program is copied with the
# shared libraries it needs, found by following DT_NEEDED through the
# sysroot. httpd is not built: no sig-network test uses it (only the
# StatefulSet fixtures do).
#
# Reruns are incremental: an image is rebuilt only when the hash of its
# inputs (mkimage, its arguments, the content of every file it adds)
# changed. One line per image: name, size, seconds, built or cached.
set -euo pipefail

if [ $# -lt 2 ]; then
	echo "usage: $0 OUTDIR BINDIR [IMAGE...]" >&2
	exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
BIN=$(cd "$2" && pwd)
shift 2
IMAGES=("$@")
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(pause agnhost busybox jessie-dnsutils nginx distroless-iptables regression-issue-74839 coredns)
CACHE=${IMAGES_CACHE:-$OUT/cache}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GO=${GO:-go}
KUBE_VERSION=v1.34.2
E2E=registry.k8s.io/e2e-test-images
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Every Debian package an image takes files from; their dependencies are
# fetched too, so the shared libraries can be found.
DEB_PACKAGES=(busybox curl netcat-openbsd bind9-dnsutils bind9-host iproute2 libc-bin nginx-light nginx-common iptables wget conntrack)
SYS=$CACHE/sysroot
FILES=$CACHE/files

die() {
	echo "images.sh: $*" >&2
	exit 1
}

for tool in readelf dpkg-deb apt-get apt-cache sha256sum; do
	command -v $tool >/dev/null || die "$tool is missing (apt-get install binutils dpkg apt coreutils)"
done

# need BINARY... fails unless BINDIR holds each binary.
need() {
	local b
	for b in "$@"; do
		[ -x "$BIN/$b" ] || die "$BIN/$b is missing"
	done
}

# kube_src prints the directory of k8s.io/kubernetes@$KUBE_VERSION in the
# module cache, downloading it if needed (pause.c, agnhost's certificates).
kube_src() {
	(cd / && GOFLAGS='' $GO mod download -json "k8s.io/kubernetes@$KUBE_VERSION") |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

# fetch_debs downloads DEB_PACKAGES and their dependencies into
# $CACHE/debs (the .deb files of other versions are removed) and unpacks
# them into $SYS when the set changed.
fetch_debs() {
	local debs=$CACHE/debs pkgs uris missing=() f
	mkdir -p "$debs"
	mapfile -t pkgs < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances "${DEB_PACKAGES[@]}" | grep -v '^[ <]' | LC_ALL=C sort -u)
	[ ${#pkgs[@]} -gt 0 ] || die "apt-cache knows none of ${DEB_PACKAGES[*]}: run apt-get update"
	# 'URI' FILE SIZE SHA256:HEX for each package, nothing downloaded.
	if ! uris=$(apt-get download --print-uris "${pkgs[@]}" 2>&1); then
		die "apt-get download --print-uris failed (apt-get update?): $uris"
	fi
	local files
	files=$(awk '{print $2}' <<<"$uris" | LC_ALL=C sort)
	for f in $files; do
		[ -s "$debs/$f" ] || missing+=("${f%%_*}")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "downloading ${#missing[@]} Debian packages into $debs"
		(cd "$debs" && apt-get -q -o APT::Sandbox::User=root download "${missing[@]}" >/dev/null) ||
			die "apt-get download failed (apt-get update?)"
	fi
	for f in "$debs"/*.deb; do
		grep -qxF "$(basename "$f")" <<<"$files" || rm -f "$f"
	done
	if [ "$(cat "$SYS.list" 2>/dev/null)" != "$files" ]; then
		rm -rf "$SYS" "$SYS.list"
		mkdir -p "$SYS"
		for f in $files; do
			dpkg-deb -x "$debs/$f" "$SYS"
		done
		printf '%s\n' "$files" >"$SYS.list"
	fi
}

# sysroot_lib SONAME prints the sysroot path of a shared library.
LIBDIRS=(lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib64 lib usr/lib)
sysroot_lib() {
	local d
	for d in "${LIBDIRS[@]}"; do
		if [ -e "$SYS/$d/$1" ]; then
			echo "$SYS/$d/$1"
			return
		fi
	done
	return 1
}

# add_elf SRC DST... appends to the array ARGS the mkimage arguments that
# add each program (SRC:DST pairs) and, transitively, the shared
# libraries it needs into /lib/x86_64-linux-gnu, with the loader where
# the programs ask for it (/lib64/ld-linux-x86-64.so.2).
add_elf() {
	local queue=() f so lib
	while [ $# -gt 0 ]; do
		ARGS+=(--add "$1:$2")
		queue+=("$1")
		shift 2
	done
	while [ ${#queue[@]} -gt 0 ]; do
		f=${queue[0]}
		queue=("${queue[@]:1}")
		for so in $(readelf -dW "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
			[ -z "${SEEN_LIBS[$so]:-}" ] || continue
			lib=$(sysroot_lib "$so") || die "$so, needed by $f, is in none of the fetched packages"
			SEEN_LIBS[$so]=1
			ARGS+=(--add "$lib:/lib/x86_64-linux-gnu/$so")
			queue+=("$lib")
		done
	done
	ARGS+=(--symlink /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2:/lib64/ld-linux-x86-64.so.2)
}

# add_busybox [SKIP...] appends the arguments that add busybox with a
# symlink per applet, except the applets named in SKIP (tools a real
# program provides in the image). It is Debian's dynamically linked
# busybox: busybox-static's shell runs its own applets before looking in
# PATH, so `nc` would never reach the real one.
add_busybox() {
	local skip=" $* " applet
	add_elf "$SYS/bin/busybox" /bin/busybox
	for applet in $("$SYS/bin/busybox" --list-full); do
		[ "$applet" != bin/busybox ] || continue
		[[ $skip != *" ${applet##*/} "* ]] || continue
		ARGS+=(--symlink "/bin/busybox:/$applet")
	done
}

# add_etc IMAGE [ACCOUNT...] appends the arguments that add /etc/passwd
# (root, nobody), /etc/group and /etc/nsswitch.conf (files before DNS,
# for getent), written to $FILES/etc-IMAGE, plus the accounts given as
# "passwd-line|group-line".
add_etc() {
	local dir=$FILES/etc-$1
	shift
	mkdir -p "$dir"
	printf '%s\n' "root:x:0:0:root:/root:/bin/sh" "nobody:x:65534:65534:nobody:/nonexistent:/bin/false" >"$dir/passwd"
	printf '%s\n' "root:x:0:" "nogroup:x:65534:" >"$dir/group"
	local a
	for a in "$@"; do
		[ -z "${a%%|*}" ] || echo "${a%%|*}" >>"$dir/passwd"
		[ -z "${a#*|}" ] || echo "${a#*|}" >>"$dir/group"
	done
	printf '%s\n' "passwd: files" "group: files" "hosts: files dns" >"$dir/nsswitch.conf"
	chmod 0644 "$dir"/*
	ARGS+=(--add "$dir/passwd:/etc/passwd" --add "$dir/group:/etc/group" --add "$dir/nsswitch.conf:/etc/nsswitch.conf")
}

# Tools from Debian that tests exec, as SRC DST pairs for add_elf.
DNS_TOOLS=("$SYS/usr/bin/dig" /usr/bin/dig "$SYS/usr/bin/nslookup" /usr/bin/nslookup
	"$SYS/usr/bin/host" /usr/bin/host "$SYS/usr/bin/getent" /usr/bin/getent)
NET_TOOLS=("$SYS/usr/bin/curl" /usr/bin/curl "$SYS/usr/bin/wget" /usr/bin/wget "$SYS/bin/nc.openbsd" /usr/bin/nc
	"$SYS/bin/ip" /usr/sbin/ip "$SYS/bin/ss" /usr/sbin/ss)

image_pause() {
	command -v gcc >/dev/null || die "gcc is missing (apt-get install gcc libc6-dev)"
	local src
	src=$(kube_src)/build/pause/linux/pause.c
	mkdir -p "$CACHE/build"
	# Upstream's CFLAGS (build/pause/Makefile), REV being ours.
	gcc -Os -Wall -Werror -static -DVERSION=v3.10.1-podnet -o "$CACHE/build/pause" "$src"
	ARGS=(--tag registry.k8s.io/pause:3.10.1 --add "$CACHE/build/pause:/pause"
		--user 65535:65535 --entrypoint '["/pause"]')
}

image_agnhost() {
	need agnhost coredns
	local certs
	certs=$(kube_src)/test/images/agnhost/porter
	ARGS=(--tag "$E2E/agnhost:2.56")
	# GNU wget, because bookworm's busybox wget segfaults on -T, which the
	# Service tests pass; /etc/wgetrc makes it try once, as busybox's does.
	add_busybox curl wget nc dig nslookup host getent ip ss
	add_elf "$BIN/agnhost" /agnhost "${NET_TOOLS[@]}" "${DNS_TOOLS[@]}"
	add_etc agnhost "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh|user-defined-in-image:x:1000:" \
		"|group-defined-in-image:x:50000:user-defined-in-image"
	echo "tries = 1" >"$FILES/etc-agnhost/wgetrc"
	chmod 0644 "$FILES/etc-agnhost/wgetrc"
	ARGS+=(--add "$FILES/etc-agnhost/wgetrc:/etc/wgetrc")
	# As upstream's test/images/agnhost/Dockerfile: the second name is for
	# the entrypoint tests, the certificates for porter, /uploads for
	# netexec, /coredns for the DNS tests that start their own server.
	ARGS+=(--symlink agnhost:/agnhost-2 --add "$BIN/coredns:/coredns"
		--add "$certs/localhost.crt:/localhost.crt" --add "$certs/localhost.key:/localhost.key"
		--dir /uploads --dir /tmp:1777 --dir /root:0700
		--env "$PATH_ENV" --entrypoint '["/agnhost"]' --cmd '["pause"]')
	local p
	for p in 80 8080 8081 9376 5000; do
		ARGS+=(--expose "$p")
	done
}

image_busybox() {
	ARGS=(--tag "$E2E/busybox:1.37.0-1")
	add_busybox
	add_etc busybox
	ARGS+=(--dir /tmp:1777 --dir /root:0700 --env "$PATH_ENV" --cmd '["sh"]')
}

image_jessie_dnsutils() {
	ARGS=(--tag "$E2E/jessie-dnsutils:1.7")
	add_busybox dig nslookup host getent
	add_elf "${DNS_TOOLS[@]}"
	add_etc jessie-dnsutils
	ARGS+=(--dir /tmp:1777 --dir /root:0700 --env "$PATH_ENV" --cmd '["sh"]')
}

image_nginx() {
	local dir=$FILES/nginx
	mkdir -p "$dir/html"
	# The upstream image serves its welcome page on port 80 only.
	cat >"$dir/nginx.conf" <<-'EOF'
		user nobody nogroup;
		worker_processes 1;
		error_log /dev/stderr notice;
		pid /run/nginx.pid;
		events { worker_connections 1024; }
		http {
		    include /etc/nginx/mime.types;
		    default_type application/octet-stream;
		    access_log /dev/stdout;
		    sendfile on;
		    server {
		        listen 80;
		        server_name localhost;
		        location / { root /usr/share/nginx/html; index index.html; }
		    }
		}
	EOF
	echo '<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body><h1>Welcome to nginx!</h1></body></html>' >"$dir/html/index.html"
	chmod 0644 "$dir/nginx.conf" "$dir/html/index.html"
	ARGS=(--tag "$E2E/nginx:1.14-4")
	add_busybox
	add_elf "$SYS/usr/sbin/nginx" /usr/sbin/nginx
	add_etc nginx
	ARGS+=(--add "$dir/nginx.conf:/etc/nginx/nginx.conf" --add "$SYS/etc/nginx/mime.types:/etc/nginx/mime.types"
		--add "$dir/html:/usr/share/nginx/html" --dir /var/log/nginx --dir /var/lib/nginx --dir /run
		--dir /tmp:1777 --env "$PATH_ENV" --expose 80 --cmd '["nginx","-g","daemon off;"]')
}

image_distroless_iptables() {
	ARGS=(--tag registry.k8s.io/build-image/distroless-iptables:v0.7.11)
	add_busybox
	add_elf "$SYS/usr/sbin/conntrack" /usr/sbin/conntrack
	add_etc distroless-iptables
	ARGS+=(--dir /tmp:1777 --env "$PATH_ENV" --cmd '["sh"]')
}

image_regression_issue_74839() {
	need regression-issue-74839
	ARGS=(--tag "$E2E/regression-issue-74839:1.2" --add "$BIN/regression-issue-74839:/regression-issue-74839"
		--entrypoint '["/regression-issue-74839"]')
}

image_coredns() {
	need coredns
	local tag=${COREDNS_TAG:-}
	if [ -z "$tag" ]; then
		local v
		v=$("$BIN/coredns" -version | sed -n 's/^CoreDNS-\([0-9.]*\)$/\1/p')
		[ -n "$v" ] || die "cannot read the version of $BIN/coredns: set COREDNS_TAG"
		tag=registry.k8s.io/coredns/coredns:v$v
	fi
	ARGS=(--tag "$tag" --add "$BIN/coredns:/coredns" --expose 53 --expose 53/udp --expose 9153
		--entrypoint '["/coredns"]')
}

# The programs go in /, where the DaemonSets in deploy/ run them from; the CNI plugins are
# there for the DaemonSet's init container to copy to the node. iptables,
# iptables-save and iptables-restore (and ip6tables*) are the nft variant,
# Debian's default; the -nft and -legacy names are both there, for
# programs that detect the node's mode.
image_podnet() {
	local progs=(podnet-agent podnet-service-proxy podnet-bridge podnet-host-local portmap loopback) p
	need "${progs[@]}"
	ARGS=(--tag podnet:dev)
	for p in "${progs[@]}"; do
		ARGS+=(--add "$BIN/$p:/$p")
	done
	local xt=usr/lib/x86_64-linux-gnu/xtables elf=() f fam mode tool
	elf=("$SYS/usr/sbin/xtables-nft-multi" /usr/sbin/xtables-nft-multi
		"$SYS/usr/sbin/xtables-legacy-multi" /usr/sbin/xtables-legacy-multi)
	# The match and target extensions, loaded with dlopen.
	for f in "$SYS/$xt"/*.so; do
		elf+=("$f" "/$xt/${f##*/}")
	done
	add_elf "${elf[@]}"
	for fam in iptables ip6tables; do
		for tool in "" -save -restore; do
			for mode in nft legacy; do
				ARGS+=(--symlink "xtables-$mode-multi:/usr/sbin/$fam-$mode$tool")
			done
			ARGS+=(--symlink "xtables-nft-multi:/usr/sbin/$fam$tool")
		done
	done
	add_etc podnet
	ARGS+=(--dir /run --dir /tmp:1777 --env "$PATH_ENV" --cmd '["/podnet-agent"]')
}

# key ARGS... prints the hash of an image's inputs: mkimage, its
# arguments, and the mode and content of everything an --add copies.
key() {
	local prev='' a src files=()
	for a in "$@"; do
		if [ "$prev" = --add ]; then
			src=${a%%:*}
			if [ -d "$src" ]; then
				mapfile -t -O ${#files[@]} files < <(find "$src" -type f | LC_ALL=C sort)
			else
				files+=("$src")
			fi
		fi
		prev=$a
	done
	{
		echo "$MKIMAGE_SUM"
		printf '%s\n' "$@"
		# Directories added whole: their layout, symlinks included.
		prev=''
		for a in "$@"; do
			if [ "$prev" = --add ] && [ -d "${a%%:*}" ]; then
				(cd "${a%%:*}" && find . -printf '%P %y %m %l\n' | LC_ALL=C sort)
			fi
			prev=$a
		done
		if [ ${#files[@]} -gt 0 ]; then
			stat -Lc '%a %n' -- "${files[@]}"
			sha256sum -- "${files[@]}"
		fi
	} | sha256sum | cut -d' ' -f1
}

# build NAME: assembles the image's arguments and writes its tarball
# unless its inputs are unchanged.
build() {
	local name=$1 start=$SECONDS k state=cached tar
	declare -gA SEEN_LIBS=()
	ARGS=()
	declare -F "image_${name//-/_}" >/dev/null || die "no image named $name"
	"image_${name//-/_}"
	tar=$OUT/$name.tar
	[ "$name" != podnet ] || tar=$OUT/podnet-image.tar
	k=$(key "${ARGS[@]}")
	if [ ! -s "$tar" ] || [ "$(cat "$tar.key" 2>/dev/null)" != "$k" ]; then
		rm -f "$tar.key"
		"$MKIMAGE" --out "$tar" "${ARGS[@]}"
		echo "$k" >"$tar.key"
		state=built
	fi
	printf '%-58s %7s %4ds %s\n' "${ARGS[1]}" \
		"$(du -h --apparent-size "$tar" | cut -f1)" $((SECONDS - start)) "$state"
}

MKIMAGE=$CACHE/tools/mkimage
(cd "$HERE/.." && $GO build -trimpath -o "$MKIMAGE" ./e2e/mkimage)
MKIMAGE_SUM=$(sha256sum <"$MKIMAGE")
fetch_debs
for img in "${IMAGES[@]}"; do
	build "$img"
done
