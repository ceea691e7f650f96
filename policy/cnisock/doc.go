// Package cnisock is the protocol by which a CNI plugin tells the
// NetworkPolicy agent of its node about a pod's sandbox before the pod
// runs: "pod NAMESPACE/NAME has addresses X" in ADD, and "forget it" in
// DEL. The agent answers an ADD only once its policies hold for those
// addresses, so that the pod is never reachable against policy, nor
// refused by it, for want of an address the API server has not yet
// reported (kubelet writes status.podIPs only after the sandbox is ready).
// Calico and Cilium do the same: their CNI ADD returns once the policy
// dataplane knows the endpoint.
//
//	// in the plugin, after IPAM
//	err := cnisock.Send(ctx, "/run/podnet/policy.sock", cnisock.Request{
//		Version: cnisock.Version, Op: cnisock.Add, ContainerID: id,
//		Namespace: "shop", Name: "web-0", UID: uid, IPs: addrs})
//
//	// in the agent
//	ln, _ := cnisock.Listen("/run/podnet/policy.sock")
//	srv := cnisock.Server{Handler: h}
//	srv.Serve(ctx, ln)
//
// # Wire format
//
// One request and one reply per connection on a unix stream socket, each
// a JSON object on one line (at most MaxMessage bytes):
//
//	→ {"version":1,"op":"add","containerID":"7f3…","namespace":"shop","name":"web-0","uid":"8c1…","ips":["10.244.0.5","fd00:244::5"]}
//	← {"version":1}
//	← {"version":1,"code":"not-found","message":"pod shop/web-0 …"}
//
// A reply without a code is success. The codes are Invalid (the request,
// or the pod it names, cannot be handled: a malformed field, a pod of
// another node, an unsupported version), NotFound (the agent does not
// know the pod, or the incarnation with that UID, yet), Timeout (the
// agent did not get the pod's policies in force within its bound) and
// Failed. The client turns them into an *Error matching ErrInvalid,
// ErrNotFound or context.DeadlineExceeded; an agent that does not answer
// at all gives an error matching ErrUnavailable.
//
// A request's version must be Version; an agent refuses another with
// Invalid, naming the version it speaks. A later version adds fields
// (older agents ignore unknown ones) or bumps Version when an agent that
// ignored a field would act wrongly.
//
// # Security
//
// Whoever can connect can make the agent believe a pod has any address,
// so Listen makes the socket mode 0600 (root only, as the agent runs), in
// a directory the agent's DaemonSet shares with the node (/run/podnet).
package cnisock
