package elector

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/config"
)

// Hook actions, the first argument of a hook (Patroni's names).
const (
	actionStart      = "on_start"
	actionStop       = "on_stop"
	actionRoleChange = "on_role_change"
)

// maxHooksQueued bounds the hook runs waiting behind a slow one.
const maxHooksQueued = 100

// hookCall is one run of a hook.
type hookCall struct {
	action, exe string
	args        []string
	env         []string
}

// hooks runs the configured executables one at a time, in the order of
// the events, off the election loop: a slow or hanging hook delays only
// the hooks behind it (and is killed after the timeout), never fencing.
type hooks struct {
	cfg     config.Hooks
	cluster string
	node    string
	log     *slog.Logger

	mu    sync.Mutex
	queue []hookCall
	wake  chan struct{}
}

func newHooks(cfg config.Hooks, cluster, node string, log *slog.Logger) *hooks {
	return &hooks{cfg: cfg, cluster: cluster, node: node, log: log, wake: make(chan struct{}, 1)}
}

// add queues a run of the hook for action (none configured: nothing).
func (h *hooks) add(action, role string, vars map[string]string) {
	c, ok := h.call(action, role, vars)
	if !ok {
		return
	}
	h.mu.Lock()
	if len(h.queue) >= maxHooksQueued {
		h.log.Warn("hooks: too many runs waiting behind a slow hook, dropping the oldest", "action", h.queue[0].action)
		h.queue = h.queue[1:]
	}
	h.queue = append(h.queue, c)
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// run runs queued hooks until ctx ends.
func (h *hooks) run(ctx context.Context) {
	for {
		h.mu.Lock()
		var c hookCall
		ok := len(h.queue) > 0
		if ok {
			c, h.queue = h.queue[0], h.queue[1:]
		}
		h.mu.Unlock()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-h.wake:
				continue
			}
		}
		h.exec(ctx, c)
	}
}

// exec runs one hook, killing its whole process group at the timeout.
func (h *hooks) exec(ctx context.Context, c hookCall) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout())
	defer cancel()
	cmd := exec.CommandContext(ctx, c.exe, c.args...)
	cmd.Env = c.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start).Round(time.Millisecond)
	output := strings.TrimSpace(out.String())
	if len(output) > 2048 {
		output = output[:2048] + "…"
	}
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		h.log.Error("hook killed: it ran past hooks.timeoutMs", "action", c.action, "hook", c.exe, "timeout", h.cfg.Timeout(), "output", output)
	case err != nil:
		h.log.Warn("hook failed", "action", c.action, "hook", c.exe, "err", err, "took", took, "output", output)
	default:
		h.log.Info("hook ran", "action", c.action, "hook", c.exe, "took", took, "output", output)
	}
}

// stop runs the on_stop hook, if any, after those queued, within the
// timeout: the elector is stopping.
func (h *hooks) stop(role string) {
	c, ok := h.call(actionStop, role, nil)
	if !ok {
		return
	}
	h.mu.Lock()
	h.queue = nil // the stop is what matters now
	h.mu.Unlock()
	h.exec(context.Background(), c)
}

// call is the run of action's hook, if one is configured.
func (h *hooks) call(action, role string, vars map[string]string) (hookCall, bool) {
	exe := map[string]string{actionStart: h.cfg.OnStart, actionStop: h.cfg.OnStop, actionRoleChange: h.cfg.OnRoleChange}[action]
	if exe == "" {
		return hookCall{}, false
	}
	env := append(os.Environ(), "CCM_ACTION="+action, "CCM_ROLE="+role, "CCM_CLUSTER="+h.cluster, "CCM_NODE="+h.node)
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return hookCall{action: action, exe: exe, args: []string{action, role, h.cluster}, env: env}, true
}
