// Package kube feeds a service.Proxy from a Kubernetes API server: the v1
// Services and discovery.k8s.io/v1 EndpointSlices that kube-proxy follows,
// and optionally this node's zone label (Config.NodeName) and the
// networking.k8s.io/v1 ServiceCIDRs (Config.FollowServiceCIDRs), read
// through client-go shared informers.
//
// # Use
//
//	p, _ := service.New(service.Config{Backend: service.Nftables(ns), NodeName: node, ClusterCIDRs: cidrs})
//	src, _ := kube.New(kube.Config{Client: clientset, Proxy: p, NodeName: node, FollowServiceCIDRs: true})
//	if err := src.Start(ctx); err != nil { ... } // returns once every object is in the proxy
//	p.Run(ctx, service.RunConfig{MinSyncPeriod: time.Second})
//
// Start returns only when the informers have listed everything and the
// proxy holds it, so the proxy's first (full) sync never removes the rules
// of Services it has not heard of yet. While the API server is away the
// informers retry and the proxy keeps its last rules in force; when it is
// back (or a watch ends with 410 Gone after etcd compaction) the informers
// relist and the differences reach the proxy as ordinary changes.
//
// # Conversion
//
// Convert maps one Service and its EndpointSlices (those labelled
// kubernetes.io/service-name with its name) to the proxy's model, as
// kube-proxy reads them: headless and ExternalName Services, and those
// labelled service.kubernetes.io/service-proxy-name or
// service.kubernetes.io/headless, have no rules; cluster, external and
// load-balancer IPs of families the proxy does not program are left out
// (a Service left with no cluster IP has no rules); load-balancer ingress
// IPs count only with ipMode VIP (or none), with the Service's source
// ranges and health-check node port; an endpoint is its first address;
// ready, serving and terminating default as the API documents (serving
// and ready when unset, not terminating); an address listed by several
// slices counts once (a ready entry wins over one that is not); endpoints
// of a family the Service has no cluster IP of are dropped; topology hints
// (forZones, forNodes) are kept.
package kube
