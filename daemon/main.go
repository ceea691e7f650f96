package daemon

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// Main is the body of a daemon's main function. It calls run with a
// context cancelled by the first SIGINT or SIGTERM and a logger writing
// text to standard error; run should return once the context is done. If
// run returns an error, Main logs it with name as the message and exits
// the process with status 1; otherwise it returns.
func Main(name string, run func(ctx context.Context, log *slog.Logger) error) {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Error(name, "err", err)
		os.Exit(1)
	}
}
