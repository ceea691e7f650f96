// Package kube feeds a service.Proxy from a Kubernetes API server: the v1
// Services and discovery.k8s.io/v1 EndpointSlices that kube-proxy follows,
// read through client-go shared informers.
//
// # Use
//
//	p, _ := service.New(service.Config{NetNS: ns, NodeName: node, ClusterCIDRs: cidrs})
//	src, _ := kube.New(kube.Config{Client: clientset, Proxy: p})
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
// kube-proxy reads them: headless and ExternalName Services have no rules;
// cluster and external IPs of families the proxy does not program are left
// out (a Service left with none has no rules); an endpoint is its first
// address; ready, serving and terminating default as the API documents
// (serving and ready when unset, not terminating); an address listed by
// several slices counts once (a ready entry wins over one that is not);
// endpoints of a family the Service has no cluster IP of are dropped;
// topology hints are ignored. Load balancer ingress IPs are not programmed.
package kube
