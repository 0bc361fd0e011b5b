// Package cli is the ccm command-line tool: it writes a node's
// configuration and talks to the cluster's daemons over NATS.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/convex-cluster-manager/ccm/shared/buildinfo"
	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/natsauth"
	"github.com/convex-cluster-manager/ccm/shared/natsconn"
)

// Exit codes of ccm, documented in docs/cli.md.
const (
	ExitOK          = 0
	ExitFailed      = 1 // the operation failed
	ExitUsage       = 2 // bad arguments or configuration
	ExitUnreachable = 3 // NATS unreachable, or the cluster has no state in it
	ExitUnknownNode = 4 // a named node is not a live member of the cluster
	ExitTimeout     = 5 // the cluster did not reach the requested state in time
	ExitDiverged    = 6 // ccm verify: a node's database diverged
	ExitNoLeader    = 7 // ccm status: no leader serves (none, promoting, or handing over)
)

// Errors that select an exit code.
var (
	ErrUsage       = errors.New("usage")
	ErrNoCluster   = errors.New("cluster not found")
	ErrUnknownNode = errors.New("unknown node")
	ErrTimeout     = errors.New("timed out")
	ErrNoLeader    = errors.New("no leader serves")
)

// ExitCode maps an error returned by Run to the process exit code.
func ExitCode(err error) int {
	var fe *config.FieldError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.Is(err, ErrUsage), errors.As(err, &fe), errors.Is(err, config.ErrExists),
		errors.Is(err, config.ErrNoFile), errors.Is(err, natsauth.ErrExists):
		return ExitUsage
	case errors.Is(err, natsconn.ErrUnreachable), errors.Is(err, ErrNoCluster):
		return ExitUnreachable
	case errors.Is(err, ErrUnknownNode):
		return ExitUnknownNode
	case errors.Is(err, ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return ExitTimeout
	case errors.Is(err, ErrDiverged):
		return ExitDiverged
	case errors.Is(err, ErrNoLeader):
		return ExitNoLeader
	}
	var ne *ffNoExec
	if errors.As(err, &ne) {
		return ExitUsage
	}
	return ExitFailed
}

type ffNoExec = ffcli.NoExecError

// Run runs ccm with args (without the program name).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := New(stdout, stderr)
	if err := root.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	return root.Run(ctx)
}

// New builds the ccm command tree.
func New(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("ccm", stderr)
	version := fs.Bool("version", false, "print the version and exit")
	root := &ffcli.Command{
		Name:       "ccm",
		ShortUsage: "ccm <command> [flags]",
		ShortHelp:  "operate a convex-cluster-manager cluster",
		FlagSet:    fs,
		Subcommands: []*ffcli.Command{
			newInit(stdout, stderr),
			newStatus(stdout, stderr),
			newPromote(stdout, stderr),
			newDemote(stdout, stderr),
			newJoin(stdout, stderr),
			newLeave(stdout, stderr),
			newVerify(stdout, stderr),
			newHistory(stdout, stderr),
			newPause(stdout, stderr),
			newResume(stdout, stderr),
			newNATSSetup(stdout, stderr),
			newVersion(stdout, stderr),
		},
		Exec: func(_ context.Context, args []string) error {
			switch {
			case *version:
				return printVersion(stdout)
			case len(args) > 0:
				return fmt.Errorf("%w: unknown command %q (ccm -h lists them)", ErrUsage, args[0])
			}
			return flag.ErrHelp
		},
	}
	for _, c := range append([]*ffcli.Command{root}, root.Subcommands...) {
		c.UsageFunc = usage
	}
	return root
}

// newVersion is ccm version.
func newVersion(stdout, stderr io.Writer) *ffcli.Command {
	return &ffcli.Command{
		Name:       "version",
		ShortUsage: "ccm version",
		ShortHelp:  "print the version of ccm",
		FlagSet:    newFlagSet("ccm version", stderr),
		Exec: func(_ context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			return printVersion(stdout)
		},
	}
}

func printVersion(stdout io.Writer) error {
	_, err := fmt.Fprintf(stdout, "ccm %s\n", buildinfo.Version())
	return err
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// noArgs rejects positional arguments.
func noArgs(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", ErrUsage, args[0])
	}
	return nil
}
