package walapply

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/convex-cluster-manager/ccm/shared/daemon"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

type metrics struct {
	messages prometheus.Counter
	failures prometheus.Counter
	verify   *daemon.VerifyMetrics
}

// newMetrics creates walapply's metrics and registers them on reg (nil: unregistered).
func newMetrics(reg prometheus.Registerer, d *Daemon) *metrics {
	m := &metrics{
		messages: prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_walapply_messages_total", Help: "WAL stream messages handled."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_walapply_failures_total", Help: "Times replication stopped on a refused message or an unusable shadow."}),
		verify:   daemon.NewVerifyMetrics(reg, "walapply", "the shadow database"),
	}
	if reg == nil {
		return m
	}
	status := func() schema.ApplyStatus { return d.Status().(schema.ApplyStatus) }
	reg.MustRegister(m.messages, m.failures,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_walapply_applied_txid", Help: "Applied TXID in the current epoch."},
			func() float64 { return float64(status().TXID) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_walapply_applied_seq", Help: "Last WAL stream sequence handled."},
			func() float64 { return float64(status().Seq) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_walapply_lag_seconds", Help: "Age of the applied position relative to the newest change in the stream."},
			func() float64 { return float64(status().LagMs) / 1000 }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_walapply_lag_txids", Help: "TXIDs of the chain not yet applied (-1: a full copy is in flight)."},
			func() float64 { return float64(status().LagTXIDs) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_walapply_lag_bytes", Help: "Bytes of LTX in the stream (a file in flight counted whole) not yet applied (-1: a full copy is in flight)."},
			func() float64 { return float64(status().LagBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_walapply_healthy", Help: "1 while replication runs without a refused message."},
			func() float64 {
				if d.Healthy() == nil {
					return 1
				}
				return 0
			}),
	)
	return m
}
