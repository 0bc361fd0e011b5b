package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// ExitConfig is a daemon's exit code for an error in its flags,
// environment or configuration file (EX_CONFIG of sysexits.h): the units'
// RestartPreventExitStatus=78 keeps systemd from restarting a daemon that
// cannot start until its configuration is fixed.
const ExitConfig = 78

// ErrConfig marks an error in a daemon's flags, environment or
// configuration file.
var ErrConfig = errors.New("configuration error")

// Exec is the whole main of a daemon binary: it runs Main with the
// process's arguments until SIGINT or SIGTERM, and exits ExitConfig on a
// configuration error, 1 on any other.
func Exec(spec Spec) {
	LimitMemory(spec)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := Main(ctx, spec, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", spec.Name, err)
	if errors.Is(err, ErrConfig) {
		os.Exit(ExitConfig)
	}
	os.Exit(1)
}
