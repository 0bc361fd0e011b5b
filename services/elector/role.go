package elector

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/convex-cluster-manager/ccm/shared/epochlog"
	"github.com/convex-cluster-manager/ccm/shared/rolewatch"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// State is the node's role as its elector sees it. The elector's loop owns
// it and changes it only through Next.
type State struct {
	Role   schema.Role
	Epoch  uint64 // epoch this node leads, or the newest epoch seen
	Leader string // node believed to lead, "" when the key is vacant
	// Deadline, on a leader, is when it must have stopped serving unless it
	// renews first: last renewal sent + TTL - safety margin.
	Deadline time.Time
	// Prepared and Ready track a leader's promotion: the database is in
	// place (WAL shipping may start), then the backend serves (the VIP may
	// point at it).
	Prepared bool
	Ready    bool
	Reason   string // why the role last changed
}

// EventKind is what happened to the elector.
type EventKind int

// Events the role state machine reacts to.
const (
	Synced   EventKind = iota + 1 // first view of the leader key (Node/Epoch, or vacant)
	Won                           // this node took the key at Epoch, request sent At
	Renewed                       // compare-and-set renewal sent At succeeded
	Lost                          // a compare-and-set failed: someone else changed the key
	Expired                       // the local deadline may have passed (checked against At)
	Resigned                      // demote requested; Node is the handover target or ""
	Observed                      // the key or a role event says Node leads Epoch
	Vacated                       // the key was deleted, expired or is being handed over
	Prepared                      // promotion of Epoch: the database is in place
	Ready                         // promotion of Epoch: the backend serves
	Draining                      // graceful demotion: stop serving, keep the lease
)

func (k EventKind) String() string {
	switch k {
	case Synced:
		return "synced"
	case Won:
		return "won"
	case Renewed:
		return "renewed"
	case Lost:
		return "lost"
	case Expired:
		return "expired"
	case Resigned:
		return "resigned"
	case Observed:
		return "observed"
	case Vacated:
		return "vacated"
	case Prepared:
		return "prepared"
	case Ready:
		return "ready"
	case Draining:
		return "draining"
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event is one input of the state machine.
type Event struct {
	Kind   EventKind
	Node   string
	Epoch  uint64
	At     time.Time
	Reason string
	// Ready, on Won after a restart, resumes a promotion that had finished.
	Ready bool
}

// Next returns the state after ev for the node self, whose lease lasts
// lease (TTL minus safety margin) from the moment a renewal is sent. Events
// that do not apply to the current role, and anything from an epoch older
// than the newest seen, leave the state unchanged.
func Next(s State, ev Event, self string, lease time.Duration) State {
	switch ev.Kind {
	case Synced:
		if s.Role != schema.RoleStarting {
			return s
		}
		s.Role, s.Leader, s.Reason = schema.RolePassive, ev.Node, "synced"
		s.Epoch = max(s.Epoch, ev.Epoch)
		return s
	case Won:
		if s.Role == schema.RoleLeader || ev.Epoch < s.Epoch {
			return s
		}
		return State{Role: schema.RoleLeader, Epoch: ev.Epoch, Leader: self, Deadline: ev.At.Add(lease), Reason: reasonOr(ev, "won"),
			Prepared: ev.Ready, Ready: ev.Ready}
	case Renewed:
		if s.Role == schema.RoleLeader {
			if d := ev.At.Add(lease); d.After(s.Deadline) {
				s.Deadline = d
			}
		}
		return s
	case Lost:
		if s.Role != schema.RoleLeader {
			return s
		}
		return stepDown(s, "", reasonOr(ev, "lost the leader key"))
	case Expired:
		if s.Role != schema.RoleLeader || ev.At.Before(s.Deadline) {
			return s
		}
		return stepDown(s, "", "self-fenced: lease not renewed before its deadline")
	case Resigned:
		if s.Role != schema.RoleLeader {
			return s
		}
		return stepDown(s, "", reasonOr(ev, "resigned"))
	case Observed:
		if ev.Epoch < s.Epoch {
			return s // stale
		}
		if s.Role == schema.RoleLeader {
			if ev.Node == self && ev.Epoch == s.Epoch {
				return s
			}
			s = stepDown(s, ev.Node, fmt.Sprintf("deposed: %s leads epoch %d", ev.Node, ev.Epoch))
		}
		s.Leader, s.Epoch = ev.Node, ev.Epoch
		return s
	case Vacated:
		if s.Role == schema.RoleLeader {
			return stepDown(s, "", reasonOr(ev, "leader key removed"))
		}
		s.Leader = ""
		return s
	case Draining:
		if s.Role == schema.RoleLeader {
			s.Ready = false
		}
		return s
	case Prepared, Ready:
		if s.Role != schema.RoleLeader || ev.Epoch != s.Epoch {
			return s // a promotion of an epoch this node no longer leads
		}
		s.Prepared = true
		s.Ready = s.Ready || ev.Kind == Ready
		return s
	}
	return s
}

func stepDown(s State, leader, reason string) State {
	return State{Role: schema.RolePassive, Epoch: s.Epoch, Leader: leader, Reason: reason}
}

func reasonOr(ev Event, def string) string {
	if ev.Reason != "" {
		return ev.Reason
	}
	return def
}

// subscribeRoleEvents delivers to events, until ctx ends, the events of
// other nodes' leaders that the leader key confirms (rolewatch.Confirm):
// one that claims a newer epoch is otherwise a message anyone could send,
// which would depose this leader and shut out every real epoch below it.
// The confirmed epoch's renewals are not read again.
func (e *Elector) subscribeRoleEvents(ctx context.Context, events chan<- schema.RoleEvent) (*nats.Subscription, error) {
	var confirmedNode string
	var confirmedEpoch uint64
	return e.nc.Subscribe(schema.RoleSubjects(e.cluster), func(m *nats.Msg) {
		var ev schema.RoleEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			e.log.Warn("ignoring invalid role event", "subject", m.Subject, "data", string(m.Data), "err", err)
			return
		}
		if from := schema.RoleSubjectNode(e.cluster, m.Subject); from != ev.Node {
			e.metrics.unconfirmedEvents.Inc()
			e.log.Warn("ignoring a role event for another node than its subject's", "subject", m.Subject, "node", ev.Node)
			return
		}
		if ev.Node == e.node || ev.Role != schema.RoleLeader {
			return
		}
		if ev.Node != confirmedNode || ev.Epoch != confirmedEpoch {
			cctx, cancel := context.WithTimeout(ctx, e.heartbeat)
			err := rolewatch.Confirm(cctx, e.js, e.cluster, ev)
			cancel()
			if err != nil {
				e.metrics.unconfirmedEvents.Inc()
				e.log.Warn("ignoring a role event the leader key does not confirm", "from", ev.Node, "epoch", ev.Epoch, "err", err)
				return
			}
			confirmedNode, confirmedEpoch = ev.Node, ev.Epoch
		}
		select {
		case events <- ev:
		case <-ctx.Done():
		}
	})
}

// onRoleEvent follows a confirmed event of another node's leader; one of
// an epoch older than the newest seen is ignored.
func (e *Elector) onRoleEvent(ev schema.RoleEvent) {
	if !e.gate.Admit(ev.Epoch) {
		e.metrics.staleEvents.Inc()
		e.log.Debug("ignoring role event from an older epoch", "from", ev.Node, "epoch", ev.Epoch, "newest", e.gate.Newest())
		return
	}
	e.apply(Event{Kind: Observed, Node: ev.Node, Epoch: ev.Epoch})
}

// apply moves the state machine and announces a role change.
func (e *Elector) apply(ev Event) {
	e.mu.Lock()
	old := e.state
	next := Next(old, ev, e.node, e.lease)
	e.state = next
	if next != old {
		close(e.changed)
		e.changed = make(chan struct{})
	}
	e.mu.Unlock()
	if next.Role != old.Role || next.Leader != old.Leader || next.Epoch != old.Epoch {
		e.dirty = true
	}
	lame := func(s State) bool { return s.Role == schema.RoleLeader && !s.Ready }
	switch {
	case !lame(next):
		e.servingBy = time.Time{}
	case !lame(old) || old.Epoch != next.Epoch:
		bound := e.promotionBound()
		if ev.Kind == Draining {
			bound = e.drainBound()
		}
		e.servingBy = time.Now().Add(bound)
	}
	e.record(old, next)
	if next.Role == old.Role {
		return
	}
	e.metrics.roleChanges.WithLabelValues(string(next.Role)).Inc()
	e.log.Info("role changed", "from", old.Role, "to", next.Role, "epoch", next.Epoch, "reason", next.Reason)
	action := actionRoleChange
	if old.Role == schema.RoleStarting {
		action = actionStart // the elector knows its role now
	}
	e.hooks.add(action, string(next.Role), map[string]string{"CCM_PREVIOUS_ROLE": string(old.Role),
		"CCM_EPOCH": strconv.FormatUint(next.Epoch, 10), "CCM_LEADER": next.Leader, "CCM_REASON": next.Reason})
	e.publish(next)
	e.markReady()
	switch {
	case next.Role == schema.RoleLeader && next.Ready:
		// Restarted while serving: the node's daemons kept serving until
		// the deadline and converge on this event; promoting again would
		// restart the backend. ccm-backend's health checks hand over if
		// the backend does not serve.
		e.log.Info("resumed serving after restart", "epoch", next.Epoch)
	case next.Role == schema.RoleLeader:
		// Also after a restart of the elector mid-promotion: every step is idempotent.
		e.startPromotion(next.Epoch)
	}
}

// record adds a role change to the cluster's history: an epoch this node
// began or stopped leading, or whose backend began to serve.
func (e *Elector) record(old, next State) {
	leads := func(s State) bool { return s.Role == schema.RoleLeader }
	if leads(old) && (!leads(next) || next.Epoch != old.Epoch) {
		e.history.Add(old.Epoch, epochlog.Ended, next.Reason)
	}
	if leads(next) && (!leads(old) || next.Epoch != old.Epoch) {
		e.history.Add(next.Epoch, epochlog.Began, next.Reason)
	}
	if leads(next) && next.Ready && !(leads(old) && old.Ready && old.Epoch == next.Epoch) {
		e.history.Add(next.Epoch, epochlog.Serving, "")
	}
}

// publish sends the node's role event.
func (e *Elector) publish(s State) {
	ev := schema.RoleEvent{
		Cluster: e.cluster, Node: e.node, Role: s.Role, Epoch: s.Epoch,
		Leader: s.Leader, Reason: s.Reason, At: time.Now(),
	}
	if s.Role == schema.RoleLeader {
		ev.Deadline, ev.Prepared, ev.Ready = s.Deadline, s.Prepared, s.Ready
		ev.DeadlineBoot = int64(rolewatch.BootTime() + time.Until(s.Deadline))
	}
	if err := e.nc.Publish(schema.RoleSubject(e.cluster, e.node), encode(ev)); err != nil {
		e.log.Warn("publish role event", "err", err)
	}
}
