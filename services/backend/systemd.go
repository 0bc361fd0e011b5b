package backend

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// systemctl controls the backend's unit with systemctl(1), argument vectors
// only. systemctl rather than a D-Bus client: it is what operators use and
// read in logs, needs no long-lived bus connection that could wedge, and
// every call is bounded by its context.
type systemctl struct {
	unit string
	// cgroup is the unit's control group as of the last state query
	// (for a kill that does not wait for systemd).
	cgroup *atomic.Pointer[string]
}

func newSystemctl(unit string) systemctl {
	return systemctl{unit: unit, cgroup: new(atomic.Pointer[string])}
}

// run runs systemctl with args. ccm-backend runs as an unprivileged user
// whom polkit allows the backend's unit: never wait for a password.
func (s systemctl) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "systemctl", append([]string{"--no-ask-password"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// state returns the unit's ActiveState (active, inactive, failed,
// activating…), and notes its control group.
func (s systemctl) state(ctx context.Context) (string, error) {
	out, err := s.run(ctx, "show", "--property=ActiveState,ControlGroup", s.unit)
	if err != nil {
		return "", err
	}
	var state string
	for _, line := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "ActiveState":
			state = v
		case "ControlGroup":
			if v != "" {
				s.cgroup.Store(&v)
			}
		}
	}
	if state == "" {
		return "", fmt.Errorf("systemctl show %s: no ActiveState in %q", s.unit, out)
	}
	return state, nil
}

// start starts the unit, clearing a failed state first.
func (s systemctl) start(ctx context.Context) error {
	s.run(ctx, "reset-failed", s.unit) // harmless when not failed
	_, err := s.run(ctx, "start", "--no-block", s.unit)
	return err
}

// stop stops the unit gracefully (its KillSignal: SIGINT for the backend,
// which drains) and waits for it. A frozen backend is killed instead: it
// could not drain, and thawed it would acknowledge writes that cannot be
// shipped.
func (s systemctl) stop(ctx context.Context, frozen bool) error {
	if frozen {
		return s.kill(ctx)
	}
	_, err := s.run(ctx, "stop", s.unit)
	return err
}

// kill stops the unit at once: the dead-man switch, when the lease is
// gone. Its processes are killed first without asking systemd (after a
// frozen node resumes, systemd is busy with every daemon's watchdog and
// answered in 600-850 ms), then through it.
func (s systemctl) kill(ctx context.Context) error {
	s.signalGroup(sigKill)
	if _, err := s.run(ctx, "kill", "--signal=SIGKILL", s.unit); err != nil {
		return err
	}
	_, err := s.run(ctx, "stop", s.unit)
	return err
}

// Signals for signalGroup.
const (
	sigKill = syscall.SIGKILL
	sigStop = syscall.SIGSTOP // freezes: kept with its state, SIGKILL still ends it
	sigCont = syscall.SIGCONT
)

// signalGroup sends sig to every process of the unit's control group
// (cgroup v2, or v1's systemd hierarchy), as last seen by state, without
// asking systemd. (systemd's own freezer needs cgroup v2.)
func (s systemctl) signalGroup(sig syscall.Signal) {
	cg := s.cgroup.Load()
	if cg == nil || !strings.HasPrefix(filepath.Base(*cg), strings.TrimSuffix(s.unit, ".service")) {
		return // never a group that is not the unit's own
	}
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/systemd"} {
		procs, err := os.ReadFile(filepath.Join(root, *cg, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(procs)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				syscall.Kill(pid, sig)
			}
		}
		return
	}
}

// running reports whether the unit is active or on its way.
func running(state string) bool {
	switch state {
	case "active", "activating", "reloading", "deactivating":
		return true
	}
	return false
}
