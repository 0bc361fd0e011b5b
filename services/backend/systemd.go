package backend

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// systemctl controls the backend's unit with systemctl(1), argument vectors
// only. systemctl rather than a D-Bus client: it is what operators use and
// read in logs, needs no long-lived bus connection that could wedge, and
// every call is bounded by its context.
type systemctl struct {
	unit string
}

func (s systemctl) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "systemctl", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// state returns the unit's ActiveState (active, inactive, failed, activating…).
func (s systemctl) state(ctx context.Context) (string, error) {
	out, err := s.run(ctx, "show", "--property=ActiveState", "--value", s.unit)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// start starts the unit, clearing a failed state first.
func (s systemctl) start(ctx context.Context) error {
	s.run(ctx, "reset-failed", s.unit) // harmless when not failed
	_, err := s.run(ctx, "start", "--no-block", s.unit)
	return err
}

// stop stops the unit gracefully (its KillSignal: SIGINT for the backend,
// which drains) and waits for it.
func (s systemctl) stop(ctx context.Context) error {
	_, err := s.run(ctx, "stop", s.unit)
	return err
}

// kill stops the unit at once: the dead-man switch, when the lease is gone.
func (s systemctl) kill(ctx context.Context) error {
	if _, err := s.run(ctx, "kill", "--signal=SIGKILL", s.unit); err != nil {
		return err
	}
	return s.stop(ctx)
}

// running reports whether the unit is active or on its way.
func running(state string) bool {
	switch state {
	case "active", "activating", "reloading", "deactivating":
		return true
	}
	return false
}
