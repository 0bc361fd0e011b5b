package daemon

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/convex-cluster-manager/ccm/shared/replica"
)

// VerifyMetrics record a daemon's last verification of its database
// (ccm verify, wal.verifyIntervalMs): ccm_<daemon>_verify_*.
type VerifyMetrics struct {
	at, diverged, seconds prometheus.Gauge
}

// NewVerifyMetrics creates the metrics of daemon (walship, walapply) and
// registers them on reg (nil: unregistered).
func NewVerifyMetrics(reg prometheus.Registerer, daemon, what string) *VerifyMetrics {
	name := func(s string) string { return fmt.Sprintf("ccm_%s_verify_%s", daemon, s) }
	m := &VerifyMetrics{
		at:       prometheus.NewGauge(prometheus.GaugeOpts{Name: name("last_timestamp_seconds"), Help: "When " + what + " was last read whole and compared with its position."}),
		diverged: prometheus.NewGauge(prometheus.GaugeOpts{Name: name("diverged"), Help: "1 if the last verification found " + what + " differing from its position."}),
		seconds:  prometheus.NewGauge(prometheus.GaugeOpts{Name: name("duration_seconds"), Help: "How long the last verification read " + what + "."}),
	}
	if reg != nil {
		reg.MustRegister(m.at, m.diverged, m.seconds)
	}
	return m
}

// Record records a verification's outcome.
func (m *VerifyMetrics) Record(v replica.Verification) {
	m.at.SetToCurrentTime()
	m.seconds.Set(float64(v.ElapsedMs) / 1000)
	if v.Consistent() {
		m.diverged.Set(0)
	} else {
		m.diverged.Set(1)
	}
}
