# podnet — two commands matter: `sudo make demo` and `sudo make test`.
SHELL := /bin/bash
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
REFBIN := $(CURDIR)/.refbin
PLUGINS_VERSION := v1.10.0
CNITOOL_VERSION := v1.3.0
STATICCHECK_VERSION := v0.8.2
APT_PKGS := iproute2 iptables nftables conntrack iputils-ping ethtool kmod util-linux etcd-server
KUBE_VERSION := v1.34.2
KUBE_LDFLAGS := -s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34
GOBIN_DIR := $(shell $(GO) env GOPATH)/bin

.PHONY: all deps deps-system deps-e2e test lint unit demo build image bench e2e clean

all: test

# deps-system installs the kernel tools a fresh Debian machine lacks.
deps-system:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# deps adds staticcheck, the pinned reference programs tests compare
# against, and kube-apiserver (built from tools/kube-apiserver, a module of
# its own: k8s.io/kubernetes cannot be go-installed) for the tests that
# follow a real control plane (package kubetest).
deps: deps-system
	@test -x $(GOBIN_DIR)/staticcheck || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@mkdir -p $(REFBIN)
	@for p in ipam/host-local main/bridge meta/portmap; do \
		b=$(REFBIN)/$$(basename $$p); \
		test -x $$b || GOBIN=$(REFBIN) $(GO) install github.com/containernetworking/plugins/plugins/$$p@$(PLUGINS_VERSION); \
	done
	@test -x $(REFBIN)/cnitool || GOBIN=$(REFBIN) $(GO) install github.com/containernetworking/cni/cnitool@$(CNITOOL_VERSION)
	@test -x $(REFBIN)/kube-apiserver || { echo "building kube-apiserver $(KUBE_VERSION) (a few minutes the first time)"; \
		cd tools/kube-apiserver && $(GO) build -trimpath -ldflags '$(KUBE_LDFLAGS)' -o $(REFBIN)/kube-apiserver .; }

# kube-proxy is the anchor of bench/programming.sh; only the benchmark needs it.
$(REFBIN)/kube-proxy:
	cd tools/kube-proxy && $(GO) build -trimpath -ldflags '$(KUBE_LDFLAGS)' -o $(REFBIN)/kube-proxy .

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN_DIR)/staticcheck ./...

# unit runs one test binary at a time (-p 1): each binary's leak check
# compares /var/run/netns before and after its tests, and would take
# another package's named namespaces, made meanwhile, for its own leaks.
unit:
	PODNET_REQUIRE_PRIVILEGED=1 PODNET_REFBIN=$(REFBIN) $(GO) test -race -count=1 -p 1 ./...

test: deps lint unit

# build puts the programs in bin/ under the names they install as (each
# directory under examples/ is named after its program): podnet-bridge and
# podnet-host-local (CNI plugins), podnet-cluster (the demo),
# podnet-inspect, podnet-service-proxy, podnet-agent.
PROGRAMS := podnet-bridge podnet-host-local podnet-cluster podnet-inspect podnet-service-proxy podnet-agent
build:
	@mkdir -p bin
	GOBIN=$(CURDIR)/bin $(GO) install $(addprefix ./examples/,$(PROGRAMS))

# image writes bin/podnet-image.tar, the image deploy/ runs, tagged
# podnet:dev (docker.io/library/podnet:dev once a runtime normalizes it),
# without a registry or a container engine: the programs built with
# CGO_ENABLED=0, the reference portmap and loopback plugins, and Debian's
# iptables (see e2e/images.sh). Import it with
# `ctr -n k8s.io images import bin/podnet-image.tar`.
IMAGE_CACHE := $(CURDIR)/bin/image-cache
IMAGE_PROGRAMS := podnet-agent podnet-service-proxy podnet-bridge podnet-host-local
image:
	@mkdir -p $(IMAGE_CACHE)/bin
	CGO_ENABLED=0 GOBIN=$(IMAGE_CACHE)/bin $(GO) install -trimpath -ldflags "-s -w" $(addprefix ./examples/,$(IMAGE_PROGRAMS))
	@for p in main/loopback meta/portmap; do \
		b=$(IMAGE_CACHE)/bin/$$(basename $$p); \
		$(GO) version -m $$b 2>/dev/null | grep -q "^[[:space:]]*mod.*$(PLUGINS_VERSION)" || \
		CGO_ENABLED=0 GOBIN=$(IMAGE_CACHE)/bin $(GO) install -trimpath -ldflags "-s -w" github.com/containernetworking/plugins/plugins/$$p@$(PLUGINS_VERSION); \
	done
	IMAGES_CACHE=$(IMAGE_CACHE) GO=$(GO) e2e/images.sh bin $(IMAGE_CACHE)/bin podnet

# demo builds the article's cluster in namespaces, checks its claims with
# real traffic, prints the evidence and tears it down.
demo: deps-system build
	bin/podnet-cluster --cni-path bin

# e2e starts a Kubernetes v1.34.2 cluster of kubelet + containerd nodes in
# network namespaces, installs podnet from deploy/ and runs the upstream
# sig-network e2e tests on both proxy backends (e2e/run.sh says more).
# Not part of test: it builds Kubernetes (about 30 minutes the first time
# on two cores; cached after) and runs for long.
E2E_PKGS := containerd runc openssl gcc binutils
deps-e2e: deps
	@missing=""; for p in $(E2E_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

e2e: deps-e2e
	PODNET_REFBIN=$(REFBIN) e2e/run.sh

bench: deps
	PODNET_REFBIN=$(REFBIN) $(GO) test -run '^$$' -bench . -benchtime 1x ./...

clean:
	rm -rf $(REFBIN) bin
