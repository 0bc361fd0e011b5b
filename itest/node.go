//go:build integration

// Package itest holds the node and cluster tests: real systemd, iproute2
// and NATS in containers from locally built images (make images).
package itest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	dnetwork "github.com/docker/docker/api/types/network"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/convex-cluster-manager/ccm/services/cli"
)

// Image is the node image built by `make images`.
const Image = "ccm-node:dev"

// Net is a docker network with an explicit /24 the test picked.
type Net struct {
	Name   string
	Prefix string // e.g. "10.213.44"
}

// NewNet creates a network on a random 10.2xx.yyy.0/24, removed after the test.
func NewNet(t *testing.T) Net {
	t.Helper()
	ctx := context.Background()
	prefix := fmt.Sprintf("10.%d.%d", 200+rand.IntN(50), rand.IntN(250))
	nw, err := network.New(ctx, network.WithIPAM(&dnetwork.IPAM{
		Config: []dnetwork.IPAMConfig{{Subnet: prefix + ".0/24", Gateway: prefix + ".1"}},
	}))
	if err != nil {
		t.Fatalf("create network %s.0/24: %v", prefix, err)
	}
	t.Cleanup(func() { nw.Remove(context.Background()) })
	return Net{Name: nw.Name, Prefix: prefix}
}

// Node is a container running systemd with the ccm units installed.
type Node struct {
	C    testcontainers.Container
	Name string
	IP   string

	statusErrAt time.Time // last logged ccm status failure
}

// StartNode starts a node container at ip on nw and waits for systemd.
func StartNode(t *testing.T, nw Net, name, ip string) *Node {
	t.Helper()
	return StartNodeWith(t, nw, name, ip, NodeOptions{})
}

// NodeOptions change how a node container is made.
type NodeOptions struct {
	// DataMiB, if set, makes /var/lib/convex (data and replica) a tmpfs
	// of that size instead of a volume, so that a test can fill it.
	DataMiB int
}

// StartNodeWith starts a node container as o says.
func StartNodeWith(t *testing.T, nw Net, name, ip string, o NodeOptions) *Node {
	t.Helper()
	ctx := context.Background()
	req := testcontainers.ContainerRequest{
		Image:    Image,
		Name:     fmt.Sprintf("ccm-it-%s-%04x", name, rand.IntN(1<<16)),
		Networks: []string{nw.Name},
		Tmpfs:    map[string]string{"/run": "", "/run/lock": "", "/tmp": ""},
		// The node's name as its host name: the stand-in names the node
		// that answered with it.
		ConfigModifier: func(cc *container.Config) { cc.Hostname = name },
		HostConfigModifier: func(hc *container.HostConfig) {
			// systemd as PID 1 without --privileged (not allowed here).
			hc.CapAdd = []string{"SYS_ADMIN", "NET_ADMIN", "NET_RAW"}
			hc.SecurityOpt = []string{"seccomp=unconfined", "apparmor=unconfined"}
			hc.Binds = []string{"/sys/fs/cgroup:/sys/fs/cgroup:ro"}
			// Databases and NATS's store on a volume, as on a data disk:
			// not on the container's root (fuse-overlayfs here, which
			// costs a round trip per system call). One volume holds the
			// data and replica directories, as it must (adopt and install
			// rename files between them).
			for _, dir := range []string{"/var/lib/convex", "/var/lib/nats"} {
				if dir == "/var/lib/convex" && o.DataMiB > 0 {
					hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeTmpfs, Target: dir,
						TmpfsOptions: &mount.TmpfsOptions{SizeBytes: int64(o.DataMiB) << 20, Mode: 0o750}})
					continue
				}
				hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeVolume, Target: dir})
			}
		},
		EndpointSettingsModifier: func(m map[string]*dnetwork.EndpointSettings) {
			if es, ok := m[nw.Name]; ok {
				es.IPAMConfig = &dnetwork.EndpointIPAMConfig{IPv4Address: ip}
			}
		},
		WaitingFor: wait.ForExec([]string{"systemctl", "is-system-running", "--wait"}).WithStartupTimeout(60 * time.Second),
	}
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{ContainerRequest: req, Started: true})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	n := &Node{C: c, Name: name, IP: ip}
	if o.DataMiB > 0 {
		// A tmpfs starts empty: the image's directories, as it has them.
		n.Must(t, "sh", "-c", "install -d -o ccm -g convex -m 0750 /var/lib/convex /var/lib/convex/replica && install -d -o ccm -g convex -m 0770 /var/lib/convex/data")
	}
	t.Cleanup(func() {
		// CCM_ITEST_JOURNALS=1 keeps the journals of a passing test too.
		if t.Failed() || os.Getenv("CCM_ITEST_JOURNALS") != "" {
			_, out := n.Exec(t, "journalctl", "--no-pager", "-n", "80", "-u", "ccm-*", "-u", "convex-backend")
			t.Logf("journal of %s:\n%s", name, out)
			// The whole journal, for what the last lines do not show.
			dir := filepath.Join(os.TempDir(), "ccm-itest", strings.ReplaceAll(t.Name(), "/", "_"))
			if _, all := n.Exec(t, "journalctl", "--no-pager", "-o", "short-precise"); os.MkdirAll(dir, 0o755) == nil {
				if err := os.WriteFile(filepath.Join(dir, name+".journal"), []byte(all), 0o644); err == nil {
					t.Logf("full journal of %s: %s", name, filepath.Join(dir, name+".journal"))
				}
			}
		}
		c.Terminate(context.Background())
	})
	return n
}

// Docker runs `docker args... <n's container>` on the host (kill, start,
// pause, unpause) and fails the test if it fails.
func (n *Node) Docker(t *testing.T, args ...string) {
	t.Helper()
	name, err := n.C.Name(t.Context())
	if err != nil {
		t.Fatalf("container of %s: %v", n.Name, err)
	}
	args = append(args, strings.TrimPrefix(name, "/"))
	if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
		t.Fatalf("docker %s: %v %s", strings.Join(args, " "), err, out)
	}
}

// Cut partitions n from the network nw, as a failed switch port would:
// two blackhole routes, more specific than the interface's own, discard
// everything n sends to the subnet. Packets still arrive, but no reply
// leaves, so peers hear nothing; the interface, its addresses and the VIP
// stay as they were (docker network disconnect removes the interface,
// and connect adds it back under another name). Heal undoes it.
func (n *Node) Cut(t *testing.T, nw Net) {
	t.Helper()
	for _, half := range []string{".0/25", ".128/25"} {
		n.Must(t, "ip", "route", "add", "blackhole", nw.Prefix+half)
	}
}

// Heal ends Cut.
func (n *Node) Heal(t *testing.T, nw Net) {
	t.Helper()
	for _, half := range []string{".0/25", ".128/25"} {
		n.Must(t, "ip", "route", "del", "blackhole", nw.Prefix+half)
	}
}

// Exec runs cmd in the node and returns its exit code and output.
func (n *Node) Exec(t *testing.T, cmd ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code, r, err := n.C.Exec(ctx, cmd, tcexec.Multiplexed())
	if err != nil {
		t.Fatalf("%s: exec %v: %v", n.Name, cmd, err)
	}
	b, _ := io.ReadAll(r)
	return code, string(b)
}

// Must runs cmd and fails the test unless it succeeds.
func (n *Node) Must(t *testing.T, cmd ...string) string {
	t.Helper()
	code, out := n.Exec(t, cmd...)
	if code != 0 {
		t.Fatalf("%s: %s: exit %d: %s", n.Name, strings.Join(cmd, " "), code, out)
	}
	return out
}

// Init writes the node's configuration with ccm init.
func (n *Node) Init(t *testing.T, cluster, natsURL string, extra ...string) {
	t.Helper()
	args := append([]string{"ccm", "init", "--force", "--cluster-id", cluster, "--node-id", n.Name,
		"--nats-servers", natsURL}, extra...)
	n.Must(t, args...)
}

// Status runs ccm status --json on the node.
func (n *Node) Status(t *testing.T) cli.ClusterStatus {
	t.Helper()
	code, out := n.Exec(t, "timeout", "15", "ccm", "status", "--json")
	var st cli.ClusterStatus
	if code == cli.ExitOK || code == cli.ExitNoLeader { // 7 prints the status too
		json.NewDecoder(strings.NewReader(out)).Decode(&st)
	} else if time.Since(n.statusErrAt) > 5*time.Second {
		n.statusErrAt = time.Now()
		t.Logf("%s: ccm status: exit %d: %s", n.Name, code, strings.TrimSpace(out))
	}
	return st
}

// HasVIP reports whether the node carries addr.
func (n *Node) HasVIP(t *testing.T, addr string) bool {
	t.Helper()
	_, out := n.Exec(t, "ip", "-o", "-4", "addr", "show", "dev", "eth0")
	return strings.Contains(out, " "+addr+"/")
}

// Active reports whether a unit is active on the node.
func (n *Node) Active(t *testing.T, unit string) bool {
	t.Helper()
	code, _ := n.Exec(t, "systemctl", "is-active", "--quiet", unit)
	return code == 0
}

// MAC is the node's eth0 address.
func (n *Node) MAC(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(n.Must(t, "cat", "/sys/class/net/eth0/address"))
}

// Eventually polls cond every 50 ms until it holds or within passes.
func Eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RequireImage fails with instructions when the node image is missing.
func RequireImage() error {
	var out bytes.Buffer
	cmd := exec.Command("docker", "image", "inspect", Image)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("image %s missing (run `make images`): %v", Image, err)
	}
	return nil
}
