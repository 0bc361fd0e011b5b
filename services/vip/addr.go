package vip

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// iproute runs ip(8) and arping(8) with argument vectors (never a shell
// string). prefix, when set, runs them through another command, e.g.
// `ip netns exec NS` in tests.
type iproute struct {
	prefix []string
}

func (r iproute) run(ctx context.Context, name string, args ...string) (string, error) {
	argv := append(append(append([]string{}, r.prefix...), name), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// has reports whether iface carries cidr (address/prefix).
func (r iproute) has(ctx context.Context, iface, cidr string) (bool, error) {
	out, err := r.run(ctx, "ip", "-o", "-4", "addr", "show", "dev", iface)
	if err != nil {
		return false, err
	}
	for _, f := range strings.Fields(out) {
		if f == cidr {
			return true, nil
		}
	}
	return false, nil
}

// hold adds cidr to iface, or updates it, with a lifetime of whole
// seconds: the kernel removes the address when it ends, whether or not
// ccm-vip still runs (a frozen or killed ccm-vip cannot release it).
func (r iproute) hold(ctx context.Context, iface, cidr string, lifetime time.Duration) error {
	if lifetime < time.Second {
		return fmt.Errorf("lifetime %s: under the kernel's smallest (1 s)", lifetime)
	}
	secs := strconv.Itoa(int(lifetime / time.Second))
	_, err := r.run(ctx, "ip", "addr", "replace", cidr, "dev", iface, "valid_lft", secs, "preferred_lft", secs)
	return err
}

func (r iproute) del(ctx context.Context, iface, cidr string) error {
	_, err := r.run(ctx, "ip", "addr", "del", cidr, "dev", iface)
	return err
}

// announce sends count gratuitous (unsolicited) ARP requests for addr on
// iface, so that neighbours update their caches to this host's MAC.
func (r iproute) announce(ctx context.Context, iface, addr string, count int) error {
	_, err := r.run(ctx, "arping", "-U", "-c", fmt.Sprint(count), "-I", iface, addr)
	return err
}

// checkInterface fails with a clear error unless iface exists.
func (r iproute) checkInterface(ctx context.Context, iface string) error {
	if _, err := r.run(ctx, "ip", "-o", "link", "show", "dev", iface); err != nil {
		return fmt.Errorf("vip.interface %q: no such interface: %w", iface, err)
	}
	return nil
}
