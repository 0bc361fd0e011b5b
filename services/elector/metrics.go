package elector

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

type metrics struct {
	renewals          prometheus.Counter
	renewFailures     prometheus.Counter
	campaigns         prometheus.Counter
	staleEvents       prometheus.Counter
	unconfirmedEvents prometheus.Counter
	roleChanges       *prometheus.CounterVec
}

// newMetrics creates the elector's metrics and registers them on reg (nil: unregistered).
func newMetrics(reg prometheus.Registerer, e *Elector) *metrics {
	m := &metrics{
		renewals:          prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_elector_renewals_total", Help: "Successful lease renewals."}),
		renewFailures:     prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_elector_renew_failures_total", Help: "Failed lease renewals (conflicts and timeouts)."}),
		campaigns:         prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_elector_campaigns_total", Help: "Attempts to create the leader key."}),
		staleEvents:       prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_elector_stale_events_total", Help: "Role events ignored because their epoch was older than the newest seen."}),
		unconfirmedEvents: prometheus.NewCounter(prometheus.CounterOpts{Name: "ccm_elector_unconfirmed_events_total", Help: "Role events of other nodes ignored because the leader key did not confirm them (forged, or outdated), or sent on another node's subject."}),
		roleChanges:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ccm_elector_role_changes_total", Help: "Role changes, by new role."}, []string{"role"}),
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.renewals, m.renewFailures, m.campaigns, m.staleEvents, m.unconfirmedEvents, m.roleChanges,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_elector_is_leader", Help: "1 while this node is the leader."}, func() float64 {
			if e.State().Role == schema.RoleLeader {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_elector_paused_seconds", Help: "How long the cluster has been paused (maintenance mode, ccm pause); 0 when not paused."}, func() float64 {
			return e.pausedFor().Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_elector_epoch", Help: "Epoch led by this node, or the newest seen."}, func() float64 {
			return float64(e.State().Epoch)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ccm_elector_lease_remaining_seconds", Help: "Time until this leader must fence itself; 0 on passives."}, func() float64 {
			s := e.State()
			if s.Role != schema.RoleLeader {
				return 0
			}
			return max(0, time.Until(s.Deadline).Seconds())
		}),
	)
	return m
}
