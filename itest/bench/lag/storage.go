package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// storageRun is one measurement of mirroring the storage directory.
type storageRun struct {
	small, big             time.Duration // from the last write to mirrored on the passive
	published              time.Duration // from the last small write to all in the leader's manifest
	rssSmall, rssBig       int64         // peak RSS of the passive's ccm-storage after each phase
	leaderSmall, leaderBig int64         // and of the leader's
}

// measureStorage runs ccm-storage on a leader and a passive (separate
// processes, one nats-server) and times how long the passive takes to
// mirror o.storageFiles small files, then one file of o.storageBigMiB,
// with each daemon's peak RSS after each phase.
func measureStorage(o options) (storageRun, error) {
	var r storageRun
	c, err := newCluster(o.keep, o.natsSync)
	if err != nil {
		return r, err
	}
	defer c.close()
	conf1, err := c.nodeConfig(o.bin, "n1")
	if err != nil {
		return r, err
	}
	conf2, err := c.nodeConfig(o.bin, "n2")
	if err != nil {
		return r, err
	}
	if err := c.start("elector-n1", filepath.Join(o.bin, "ccm-elector"), "-config", conf1, "-metrics-addr", ""); err != nil {
		return r, err
	}
	if err := waitFor(c.url, "ccm.bench.n1.elector.status", func(m json.RawMessage) bool { return strings.Contains(string(m), `"role":"leader"`) }); err != nil {
		return r, err
	}
	for name, conf := range map[string]string{"storage-n1": conf1, "elector-n2": conf2, "storage-n2": conf2} {
		bin := "ccm-storage"
		if name == "elector-n2" {
			bin = "ccm-elector"
		}
		if err := c.start(name, filepath.Join(o.bin, bin), "-config", conf, "-metrics-addr", ""); err != nil {
			return r, err
		}
	}
	if err := mirrored(c.url, 0, time.Minute); err != nil {
		return r, err
	}
	root := filepath.Join(c.dir, "n1", "data", "storage")
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 4096)
	for i := range o.storageFiles {
		p := filepath.Join(root, "files", fmt.Sprintf("%02x", i%256), fmt.Sprintf("f%05d", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		n := 512 + rng.IntN(3584) // 0.5-4 KiB
		for j := range n {
			buf[j] = byte(rng.Uint32())
		}
		if err := os.WriteFile(p, buf[:n], 0o644); err != nil {
			return r, err
		}
	}
	t0 := time.Now()
	if err := published(c.url, o.storageFiles, 10*time.Minute); err != nil {
		return r, err
	}
	r.published = time.Since(t0)
	if err := mirrored(c.url, o.storageFiles, 10*time.Minute); err != nil {
		return r, err
	}
	r.small = time.Since(t0)
	r.leaderSmall, r.rssSmall = procPeakRSS(c.procs["storage-n1"].Process.Pid), procPeakRSS(c.procs["storage-n2"].Process.Pid)

	if err := randomFile(filepath.Join(root, "exports", "big.zip"), o.storageBigMiB<<20); err != nil {
		return r, err
	}
	t0 = time.Now()
	if err := mirrored(c.url, o.storageFiles+1, 10*time.Minute); err != nil {
		return r, err
	}
	r.big = time.Since(t0)
	r.leaderBig, r.rssBig = procPeakRSS(c.procs["storage-n1"].Process.Pid), procPeakRSS(c.procs["storage-n2"].Process.Pid)
	return r, nil
}

// mirrored waits until n2's ccm-storage is synced with files files.
func mirrored(url string, files int, within time.Duration) error {
	return waitStorage(url, "n2", within, func(st schema.StorageStatus) bool {
		return st.State == schema.StorageSynced && st.Files == files && st.ManifestFiles == files
	})
}

// published waits until n1's ccm-storage has files files in its manifest.
func published(url string, files int, within time.Duration) error {
	return waitStorage(url, "n1", within, func(st schema.StorageStatus) bool { return st.Files == files })
}

func waitStorage(url, node string, within time.Duration, ok func(schema.StorageStatus) bool) error {
	return waitForWithin(url, "ccm.bench."+node+".storage.status", within, func(m json.RawMessage) bool {
		var st schema.StorageStatus
		return json.Unmarshal(m, &st) == nil && ok(st)
	})
}

// randomFile writes size incompressible bytes to path.
func randomFile(path string, size int64) error {
	os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.NewChaCha8([32]byte{7}), size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// benchStorage runs measureStorage o.storageRuns times and prints medians.
func benchStorage(ctx context.Context, o options) error {
	fmt.Printf("# storage mirroring: %d files of 0.5-4 KiB, then one %d MiB file; leader ccm-storage -> NATS -> passive ccm-storage (separate processes); %d runs\n",
		o.storageFiles, o.storageBigMiB, o.storageRuns)
	var runs []storageRun
	for i := range o.storageRuns {
		r, err := measureStorage(o)
		if err != nil {
			return err
		}
		fmt.Printf("  run %d: %d small files published by the leader %s, mirrored %s after the last write (%.0f files/s); %d MiB file %s after close (%.0f MiB/s); peak RSS leader %.0f→%.0f MiB, passive %.0f→%.0f MiB\n",
			i+1, o.storageFiles, r.published.Round(time.Millisecond), r.small.Round(time.Millisecond), float64(o.storageFiles)/r.small.Seconds(),
			o.storageBigMiB, r.big.Round(time.Millisecond), float64(o.storageBigMiB)/r.big.Seconds(),
			mb(r.leaderSmall), mb(r.leaderBig), mb(r.rssSmall), mb(r.rssBig))
		runs = append(runs, r)
	}
	med := func(f func(storageRun) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	small := med(func(r storageRun) float64 { return r.small.Seconds() })
	big := med(func(r storageRun) float64 { return r.big.Seconds() })
	fmt.Printf("storage    %d small files: median %.2fs (%.0f files/s); %d MiB file: median %.2fs (%.0f MiB/s); median peak RSS passive %.0f MiB after small files, %.0f MiB after the big file (leader %.0f / %.0f MiB)\n",
		o.storageFiles, small, float64(o.storageFiles)/small, o.storageBigMiB, big, float64(o.storageBigMiB)/big,
		med(func(r storageRun) float64 { return mb(r.rssSmall) }), med(func(r storageRun) float64 { return mb(r.rssBig) }),
		med(func(r storageRun) float64 { return mb(r.leaderSmall) }), med(func(r storageRun) float64 { return mb(r.leaderBig) }))
	return nil
}

func mb(n int64) float64 { return float64(n) / (1 << 20) }
