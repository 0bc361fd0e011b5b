package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// FieldError is a setting with a value that is not allowed.
type FieldError struct {
	Path    string // JSON path, e.g. "vip.netmask"
	Value   any
	Allowed string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%s: invalid value %#v: %s", e.Path, e.Value, e.Allowed)
}

var (
	idPattern   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	unitPattern = regexp.MustCompile(`^[A-Za-z0-9:_.\\@-]+$`)
)

// ValidID reports whether s can be a cluster or node ID: it must be usable as a
// NATS subject token and in KV bucket and stream names.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// IDRule describes what ValidID accepts.
const IDRule = "1-64 characters from A-Z a-z 0-9 '-' '_'"

// Validate checks every setting and returns all problems found, each a *FieldError.
func (c Config) Validate() error {
	var errs []error
	bad := func(path string, v any, allowed string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Value: v, Allowed: fmt.Sprintf(allowed, args...)})
	}

	if !ValidID(c.ClusterID) {
		bad("clusterId", c.ClusterID, "required, %s", IDRule)
	}
	if !ValidID(c.NodeID) {
		bad("nodeId", c.NodeID, "required, %s", IDRule)
	}

	if len(c.NATS.Servers) == 0 {
		bad("nats.servers", c.NATS.Servers, "at least one server URL is required")
	}
	for i, s := range c.NATS.Servers {
		if err := checkURL(s, "nats", "tls", "ws", "wss"); err != "" {
			bad(fmt.Sprintf("nats.servers[%d]", i), s, "%s", err)
		}
	}
	if c.NATS.NkeyFile != "" && c.NATS.Credentials != "" {
		bad("nats.nkeyFile", c.NATS.NkeyFile, "credentials and nkeyFile are two ways to name the NATS user: give one")
	}
	for path, p := range map[string]string{"nats.inboxPrefix": c.NATS.InboxPrefix, "nats.cli.inboxPrefix": c.NATS.CLI.InboxPrefix} {
		if p != "" && (strings.ContainsAny(p, " \t\r\n.*>") || p == "_INBOX") {
			bad(path, p, "must be one subject token (no '.', '*', '>' or spaces), not _INBOX itself")
		}
	}
	if (c.NATS.TLS.CertFile == "") != (c.NATS.TLS.KeyFile == "") {
		bad("nats.tls.keyFile", c.NATS.TLS.KeyFile, "certFile and keyFile must be given together")
	}
	if c.NATS.Replicas < 1 || c.NATS.Replicas > 5 {
		bad("nats.replicas", c.NATS.Replicas, "must be 1 to 5")
	}

	if c.VIP.Address != "" {
		a, err := netip.ParseAddr(c.VIP.Address)
		if err != nil || !a.Is4() {
			bad("vip.address", c.VIP.Address, "must be an IPv4 address such as 10.0.0.100, or empty for no VIP")
		}
		if !validInterface(c.VIP.Interface) {
			bad("vip.interface", c.VIP.Interface, "must be a network interface name (1-15 characters, no '/', ':' or spaces)")
		}
	}
	if c.VIP.ARPCount < 1 || c.VIP.ARPCount > 20 {
		bad("vip.arpCount", c.VIP.ARPCount, "must be 1 to 20")
	}
	if c.VIP.ARPRepeatMs < 0 || c.VIP.ARPRepeatMs > 60000 {
		bad("vip.arpRepeatMs", c.VIP.ARPRepeatMs, "must be 0 to 60000")
	}
	if c.VIP.Netmask < 1 || c.VIP.Netmask > 32 {
		bad("vip.netmask", c.VIP.Netmask, "must be a prefix length from 1 to 32")
	}

	e := c.Election
	if e.HeartbeatIntervalMs < 100 {
		bad("election.heartbeatIntervalMs", e.HeartbeatIntervalMs, "must be at least 100")
	}
	if e.SafetyMarginMs < 100 {
		bad("election.safetyMarginMs", e.SafetyMarginMs, "must be at least 100")
	}
	if min := 2*e.HeartbeatIntervalMs + e.SafetyMarginMs; e.LeaderTTLMs < min || e.LeaderTTLMs < 1000 {
		bad("election.leaderTtlMs", e.LeaderTTLMs,
			"must be at least 1000 and at least 2×heartbeatIntervalMs + safetyMarginMs (%d), so a leader gets two renewal attempts before it must fence itself", min)
	}

	if e.MaxLagTXIDs < 0 {
		bad("election.maxLagTxids", e.MaxLagTXIDs, "must be 0 or more")
	}
	if e.MaxLagBytes < 0 {
		bad("election.maxLagBytes", e.MaxLagBytes, "must be 0 or more")
	}
	if d, err := time.ParseDuration(c.WAL.StreamRetention); err != nil || d < time.Minute {
		bad("wal.streamRetention", c.WAL.StreamRetention, "must be a Go duration of at least 1m, such as 24h")
	}
	if c.WAL.SnapshotIntervalMs < 1000 {
		bad("wal.snapshotIntervalMs", c.WAL.SnapshotIntervalMs, "must be at least 1000")
	}
	if c.WAL.SnapshotKeep < 1 || c.WAL.SnapshotKeep > 100 {
		bad("wal.snapshotKeep", c.WAL.SnapshotKeep, "must be 1 to 100")
	}
	if !filepath.IsAbs(c.WAL.ReplicaPath) {
		bad("wal.replicaPath", c.WAL.ReplicaPath, "must be an absolute path")
	}

	if c.WAL.CaptureIntervalMs < 5 || c.WAL.CaptureIntervalMs > 1000 {
		bad("wal.captureIntervalMs", c.WAL.CaptureIntervalMs, "must be 5 to 1000")
	}
	if v := c.WAL.VerifyIntervalMs; v != 0 && v < 60000 {
		bad("wal.verifyIntervalMs", v, "must be 0 (never) or at least 60000")
	}
	if m := c.WAL.MaxUnshippedMs; m != 0 && (m < 100 || m > c.Election.LeaderTTLMs) {
		bad("wal.maxUnshippedMs", m, "must be 0 (no bound) or 100 to election.leaderTtlMs (%d)", c.Election.LeaderTTLMs)
	}
	if f := c.Backend.DBFile; f == "" || f != filepath.Base(f) || f == "." || f == ".." {
		bad("backend.dbFile", f, "must be a plain file name such as db.sqlite3")
	}
	if !unitPattern.MatchString(c.Backend.ServiceName) {
		bad("backend.serviceName", c.Backend.ServiceName, "must be a systemd unit name such as convex-backend or convex-backend.service")
	}
	if err := checkURL(c.Backend.HealthEndpoint, "http", "https"); err != "" {
		bad("backend.healthEndpoint", c.Backend.HealthEndpoint, "%s", err)
	}
	if c.Backend.StartGraceMs < 1000 {
		bad("backend.startGraceMs", c.Backend.StartGraceMs, "must be at least 1000")
	}
	if c.Backend.MaxFailures < 1 {
		bad("backend.maxFailures", c.Backend.MaxFailures, "must be at least 1")
	}
	if c.Storage.ReconcileIntervalMs < 1000 {
		bad("storage.reconcileIntervalMs", c.Storage.ReconcileIntervalMs, "must be at least 1000")
	}
	if c.Storage.SyncTimeoutMs < 1000 {
		bad("storage.syncTimeoutMs", c.Storage.SyncTimeoutMs, "must be at least 1000")
	}
	for _, h := range []struct{ path, exe string }{{"hooks.onStart", c.Hooks.OnStart}, {"hooks.onStop", c.Hooks.OnStop}, {"hooks.onRoleChange", c.Hooks.OnRoleChange}} {
		if h.exe != "" && !filepath.IsAbs(h.exe) {
			bad(h.path, h.exe, "must be an absolute path (or empty)")
		}
	}
	if c.Hooks.TimeoutMs < 100 || c.Hooks.TimeoutMs > 600000 {
		bad("hooks.timeoutMs", c.Hooks.TimeoutMs, "must be 100-600000")
	}
	if !filepath.IsAbs(c.Backend.DataPath) {
		bad("backend.dataPath", c.Backend.DataPath, "must be an absolute path")
	}
	if filepath.IsAbs(c.WAL.ReplicaPath) && filepath.Clean(c.WAL.ReplicaPath) == filepath.Clean(c.Backend.DataPath) {
		bad("wal.replicaPath", c.WAL.ReplicaPath, "must differ from backend.dataPath")
	}
	return errors.Join(errs...)
}

// checkURL returns why s is not a URL with one of schemes and a host, or "".
func checkURL(s string, schemes ...string) string {
	want := "a URL such as " + schemes[0] + "://host:port"
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "must be " + want
	}
	for _, sc := range schemes {
		if u.Scheme == sc {
			return ""
		}
	}
	return fmt.Sprintf("scheme %q is not one of %s", u.Scheme, strings.Join(schemes, ", "))
}

func validInterface(s string) bool {
	return s != "" && len(s) <= 15 && !strings.ContainsAny(s, "/: \t\n") && s != "." && s != ".."
}
