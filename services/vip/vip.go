// Package vip is ccm-vip: it holds the floating address exactly while its
// node is the ready leader — by the newest role event, and only until that
// event's deadline — announces it with gratuitous ARP, removes it from a
// node that is not, and releases it on stop.
package vip

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/convex-cluster-manager/ccm/shared/config"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// Spec describes the ccm-vip binary to the daemon runtime.
func Spec() daemon.Spec {
	return daemon.Spec{
		Name:        schema.ServiceVIP,
		Description: "ccm floating IP",
		MetricsAddr: ":9474",
		New:         func(env daemon.Env) (daemon.Daemon, error) { return New(env) },
		Cleanup:     cleanup,
	}
}

// cleanup removes the VIP after ccm-vip exited, whatever the cause: a
// watchdog kill (a node frozen past its lease, then resumed) must not
// leave it up until the restarted daemon acts.
func cleanup(_ context.Context, env daemon.Env) error {
	if env.Config.VIP.Address == "" {
		return nil
	}
	d, err := New(env)
	if err != nil {
		return err
	}
	d.release()
	return nil
}

// reconcileEvery bounds how long a VIP added or removed behind ccm-vip's
// back stays wrong.
const reconcileEvery = time.Second

// Daemon holds the VIP while the node is the ready leader.
type Daemon struct {
	cfg   config.VIP
	cidr  string
	nc    *nats.Conn
	env   daemon.Env
	log   *slog.Logger
	ip    iproute
	ready chan struct{}
	arp   chan struct{} // requests a gratuitous ARP burst
	// heldUntil is the deadline the VIP's kernel lifetime was last set
	// to (the loop's own).
	heldUntil time.Time

	mu      sync.Mutex
	held    bool
	since   time.Time
	lastErr error
	live    daemon.Loop
	changes prometheus.Counter
}

var _ daemon.Daemon = (*Daemon)(nil)

// New returns the VIP daemon for env.
func New(env daemon.Env) (*Daemon, error) {
	return newDaemon(env, nil)
}

// newDaemon runs ip and arping through prefix (tests: a network namespace).
func newDaemon(env daemon.Env, prefix []string) (*Daemon, error) {
	c := env.Config.VIP
	d := &Daemon{cfg: c, cidr: fmt.Sprintf("%s/%d", c.Address, c.Netmask), nc: env.NC, env: env, log: env.Log,
		ip: iproute{prefix: prefix}, ready: make(chan struct{}), arp: make(chan struct{}, 1),
		changes: prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_vip_changes_total", Help: "VIP additions and removals by this node."})}
	if env.Metrics != nil {
		env.Metrics.MustRegister(d.changes, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ccm_vip_held", Help: "1 while this node holds the VIP."}, func() float64 {
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.held {
				return 1
			}
			return 0
		}))
	}
	d.live.Beat() // started: the loop's first round is due
	return d, nil
}

// Run reconciles the VIP with the node's role until ctx ends, then releases it.
func (d *Daemon) Run(ctx context.Context) error {
	if d.cfg.Address == "" {
		d.log.Info("no vip.address configured: nothing to hold")
		close(d.ready)
		<-ctx.Done()
		return nil
	}
	// A missing interface is reported (unhealthy, in status and the log)
	// and retried, not fatal: a network can come back.
	if err := d.ip.checkInterface(ctx, d.cfg.Interface); err != nil {
		d.fail(err)
	}
	roles, err := d.env.Roles()
	if err != nil {
		return err
	}
	defer roles.Close()
	defer d.release()
	// ARP bursts take a second or more: they run beside the loop so that
	// they never delay a release.
	g, ctx := errgroup.WithContext(ctx)
	defer g.Wait()
	g.Go(func() error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-d.arp:
				if err := d.ip.announce(ctx, d.cfg.Interface, d.cfg.Address, d.cfg.ARPCount); err != nil && ctx.Err() == nil {
					d.log.Warn("gratuitous ARP", "err", err)
				}
			}
		}
	})
	close(d.ready)
	var second <-chan time.Time // the second ARP burst
	for {
		changed := roles.Changed()
		deadline, want := roles.Serving(time.Now())
		var acquired bool
		if roles.Settled(time.Now()) { // just restarted: wait for the elector's word
			acquired = d.reconcile(ctx, want, deadline)
		}
		if acquired && d.cfg.ARPRepeatMs > 0 {
			second = time.After(time.Duration(d.cfg.ARPRepeatMs) * time.Millisecond)
		}
		wait := reconcileEvery
		if want {
			wait = min(wait, time.Until(deadline)) // dead-man switch
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(wait):
		case <-second:
			second = nil
			if _, ok := roles.Serving(time.Now()); ok {
				d.garp()
			}
		}
	}
}

// reconcile adds or removes the VIP; it reports whether it just added it.
// A held VIP carries the lease's deadline as its kernel lifetime (whole
// seconds, rounded down: never beyond it), extended as the lease is
// renewed: if ccm-vip is frozen or killed while leading, the kernel still
// removes the VIP about when the lease ends — a paused node that resumes
// no longer holds it beside the new leader.
func (d *Daemon) reconcile(ctx context.Context, want bool, deadline time.Time) bool {
	d.mu.Lock()
	d.live.Beat()
	d.mu.Unlock()
	has, err := d.ip.has(ctx, d.cfg.Interface, d.cidr)
	if err != nil {
		d.fail(err)
		return false
	}
	switch {
	case want && (!has || deadline.After(d.heldUntil)) && time.Until(deadline) < time.Second:
		// Less than the kernel's smallest lifetime left: the next renewal
		// extends it (a lifetime rounded up to 1 s outlived the lease).
		return false
	case want && (!has || deadline.After(d.heldUntil)):
		if err := d.ip.hold(ctx, d.cfg.Interface, d.cidr, time.Until(deadline)); err != nil {
			d.fail(err)
			return false
		}
		if time.Now().After(deadline) {
			// The lease ended during the call (a frozen node resumed):
			// the lifetime given was measured before.
			err := d.ip.del(ctx, d.cfg.Interface, d.cidr)
			if err != nil {
				d.fail(err)
			}
			d.set(false)
			d.log.Warn("VIP removed: the lease ended while it was being renewed (the node was frozen during the call)", "vip", d.cidr, "deadline", deadline, "err", err)
			return true
		}
		d.heldUntil = deadline
		d.fail(nil)
		if has {
			return false // lifetime extended
		}
		d.set(true)
		d.log.Info("VIP acquired", "vip", d.cidr, "interface", d.cfg.Interface, "until", deadline)
		d.garp()
		return true
	case !want && has:
		if err := d.ip.del(ctx, d.cfg.Interface, d.cidr); err != nil {
			d.fail(err)
			return false
		}
		d.set(false)
		d.log.Info("VIP released", "vip", d.cidr)
	default:
		d.set(has)
	}
	d.fail(nil)
	return false
}

// garp asks for a gratuitous ARP burst (coalesced with one pending).
func (d *Daemon) garp() {
	select {
	case d.arp <- struct{}{}:
	default:
	}
}

func (d *Daemon) set(held bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if held != d.held {
		d.changes.Inc()
		d.since = time.Now()
	}
	d.held = held
}

func (d *Daemon) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil && (d.lastErr == nil || d.lastErr.Error() != err.Error()) {
		d.log.Error("reconcile VIP", "err", err)
	}
	d.lastErr = err
}

// release removes the VIP on the way out.
func (d *Daemon) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if has, err := d.ip.has(ctx, d.cfg.Interface, d.cidr); err == nil && has {
		if err := d.ip.del(ctx, d.cfg.Interface, d.cidr); err != nil {
			d.log.Error("release VIP on stop", "err", err)
			return
		}
		d.log.Info("VIP released on stop", "vip", d.cidr)
	}
	d.set(false)
}

// Ready is closed once the interface is checked and role events followed.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Healthy fails while ip(8) fails, or the loop stalls.
func (d *Daemon) Healthy() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lastErr != nil {
		return d.lastErr
	}
	if d.cfg.Address != "" {
		if err := d.live.Stalled("reconcile", 30*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// Status is the reply of the status endpoint.
type Status struct {
	VIP   string    `json:"vip"`
	Held  bool      `json:"held"`
	Since time.Time `json:"since,omitzero"`
	Error string    `json:"error,omitempty"`
}

// Status reports whether this node holds the VIP.
func (d *Daemon) Status() any {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := Status{VIP: d.cidr, Held: d.held, Since: d.since}
	if d.lastErr != nil {
		st.Error = d.lastErr.Error()
	}
	return st
}

// StatusLine summarises the state for systemctl status.
func (d *Daemon) StatusLine() string {
	st := d.Status().(Status)
	if st.Held {
		return "holding " + st.VIP
	}
	return "not holding " + st.VIP
}

// AddEndpoints adds nothing beyond status: the VIP follows role events only.
func (d *Daemon) AddEndpoints(micro.Group) error { return nil }
