package natstest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/convex-cluster-manager/ccm/shared/natsconn"
)

// Perms checks what a NATS server lets a connected user do: the
// permissions violations it reports to the connection's error handler.
type Perms struct {
	t    testing.TB
	user string
	nc   *nats.Conn
	errs chan error
}

// WatchPerms takes over nc's error handler to record the violations the
// server reports to user's connection nc.
func WatchPerms(t testing.TB, user string, nc *nats.Conn) *Perms {
	p := &Perms{t: t, user: user, nc: nc, errs: make(chan error, 100)}
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case p.errs <- err:
		default:
		}
	})
	return p
}

// Refused runs what (a publish, a request, a subscription) and requires
// the server to refuse it with a permissions violation naming subject.
func (p *Perms) Refused(subject string, what func(ctx context.Context) error) {
	p.t.Helper()
	for len(p.errs) > 0 {
		<-p.errs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := what(ctx)
	select {
	case verr := <-p.errs:
		if !errors.Is(verr, nats.ErrPermissionViolation) || !strings.Contains(verr.Error(), subject) {
			p.t.Fatalf("%s on %s: got %v, want a permissions violation naming the subject", p.user, subject, verr)
		}
	case <-time.After(2 * time.Second):
		p.t.Fatalf("%s on %s: not refused by the server (the call returned %v)", p.user, subject, err)
	}
}

// Allowed runs what and requires no permissions violation and no error
// but the absence of a responder.
func (p *Perms) Allowed(what string, do func(ctx context.Context) error) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := do(ctx)
	if ferr := p.nc.FlushTimeout(2 * time.Second); ferr != nil {
		p.t.Fatalf("%s: %s: flush: %v", p.user, what, ferr)
	}
	select {
	case verr := <-p.errs:
		p.t.Fatalf("%s: %s: refused: %v", p.user, what, verr)
	case <-time.After(200 * time.Millisecond):
	}
	if err != nil && !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, natsconn.ErrNotRunning) {
		p.t.Fatalf("%s: %s: %v", p.user, what, err)
	}
}
