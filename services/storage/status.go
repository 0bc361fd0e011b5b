package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// metrics of ccm-storage.
type metrics struct {
	uploaded   prometheus.Counter
	downloaded prometheus.Counter
	captured   prometheus.Counter
	mirrored   prometheus.Counter
}

func newMetrics() metrics {
	return metrics{
		uploaded:   prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_storage_uploaded_bytes_total", Help: "Bytes of new storage contents uploaded by this node as leader."}),
		downloaded: prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_storage_downloaded_bytes_total", Help: "Bytes of storage contents downloaded by this node's mirror."}),
		captured:   prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_storage_captured_changes_total", Help: "Storage file changes (writes and deletes) published by this node as leader."}),
		mirrored:   prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_storage_mirrored_files_total", Help: "Storage files written by this node's mirror."}),
	}
}

func (m metrics) register(r prometheus.Registerer, d *Daemon) {
	gauge := func(name, help string, f func(s schema.StorageStatus) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			d.mu.Lock()
			defer d.mu.Unlock()
			return f(d.status)
		})
	}
	r.MustRegister(m.uploaded, m.downloaded, m.captured, m.mirrored,
		gauge("ccm_storage_files", "Storage files held (mirror) or published (leader) by this node.", func(s schema.StorageStatus) float64 { return float64(s.Files) }),
		gauge("ccm_storage_bytes", "Bytes of the storage files held or published by this node.", func(s schema.StorageStatus) float64 { return float64(s.Bytes) }),
		gauge("ccm_storage_failed_files", "Storage files this node could not capture or fetch.", func(s schema.StorageStatus) float64 { return float64(s.Failed) }),
		gauge("ccm_storage_synced", "1 while this node's mirror holds every file of the manifest (or it captures as leader).", func(s schema.StorageStatus) float64 {
			if s.State == schema.StorageSynced || s.State == schema.StorageCapturing {
				return 1
			}
			return 0
		}))
}

// setStatus changes the status under the lock.
func (d *Daemon) setStatus(f func(*schema.StorageStatus)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(&d.status)
}

// setCapture records a capture of epoch publishing files files.
func (d *Daemon) setCapture(epoch uint64, files int, bytes int64) {
	d.setStatus(func(s *schema.StorageStatus) {
		s.Epoch, s.Files, s.Bytes, s.ManifestFiles, s.ManifestBytes = epoch, files, bytes, files, bytes
		if s.State != schema.StorageFailed {
			s.State = schema.StorageCapturing
		}
	})
}

// captureFailed records the capture's last error (nil: it works).
func (d *Daemon) captureFailed(err error) {
	d.setStatus(func(s *schema.StorageStatus) {
		s.State, s.Error, s.Failed = schema.StorageCapturing, "", 0
		if err != nil {
			s.State, s.Error, s.Failed = schema.StorageFailed, err.Error(), 1
		}
	})
	if err != nil {
		d.log.Error("storage capture", "err", err)
	}
}

func (d *Daemon) captured(uploaded int64) {
	d.metrics.captured.Inc()
	d.metrics.uploaded.Add(float64(uploaded))
}

func (d *Daemon) fetched(n int64) { d.metrics.downloaded.Add(float64(n)) }

func (d *Daemon) mirrored() { d.metrics.mirrored.Inc() }

// Status reports what the node holds of the manifest.
func (d *Daemon) Status() any {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.status
	st.Node = d.cfg.NodeID
	switch {
	case d.released:
		st.State = schema.StorageReleased
	case d.mode == modeIdle:
		st.State = schema.StorageIdle
	}
	return st
}

// StatusLine summarises the state for systemctl status.
func (d *Daemon) StatusLine() string {
	st := d.Status().(schema.StorageStatus)
	line := fmt.Sprintf("%s: %d files, %.1f MiB", st.State, st.Files, float64(st.Bytes)/(1<<20))
	if st.Error != "" {
		line += "; " + st.Error
	}
	return line
}

// publish writes the status to the cluster bucket every second.
func (d *Daemon) publish(ctx context.Context) {
	daemon.PublishStatus(ctx, d.js, d.cfg.ClusterID, schema.StorageKey(d.cfg.NodeID), d.log, func() (any, bool) {
		st := d.Status().(schema.StorageStatus)
		st.UpdatedAt = time.Now()
		d.mu.Lock()
		defer d.mu.Unlock()
		return st, !d.left
	})
}
