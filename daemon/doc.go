// Package daemon is the scaffolding of a long-running node program built
// from podnet, such as a service proxy or a node agent: its lifetime and
// its monitoring endpoints, so that every such program stops and is
// observed the same way.
//
// Main runs the program's body with a context that SIGINT or SIGTERM
// cancels and a text logger on standard error, and exits with status 1
// when the body fails:
//
//	func main() {
//		flag.Parse()
//		daemon.Main("my-agent", func(ctx context.Context, log *slog.Logger) error {
//			return run(ctx, log) // returns once ctx is cancelled
//		})
//	}
//
// ServeMetrics serves Prometheus metrics and the two probes a kubelet or a
// load balancer asks: /healthz, answered by the program (it alone knows
// whether its work is current), and /livez, which answers "ok" while the
// process serves HTTP at all. NewRegistry gives a registry that already
// carries the Go runtime and process metrics every such program exports.
package daemon
