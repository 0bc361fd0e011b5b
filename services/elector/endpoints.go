package elector

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// Errors of the promote and demote endpoints; their micro error codes let
// clients tell them apart.
var (
	ErrNotLeader   = errors.New("this node is not the leader")
	ErrUnknownNode = errors.New("unknown node")
	ErrNotReady    = errors.New("elector not ready")
	ErrNotEligible = errors.New("not eligible to lead")
)

// Status is the reply of the status endpoint.
type Status struct {
	Node             string      `json:"node"`
	Cluster          string      `json:"cluster"`
	Role             schema.Role `json:"role"`
	Epoch            uint64      `json:"epoch"`
	Leader           string      `json:"leader,omitempty"`
	LeaseDeadline    time.Time   `json:"leaseDeadline,omitzero"`
	LeaseRemainingMs int64       `json:"leaseRemainingMs,omitempty"`
	LastRenewal      time.Time   `json:"lastRenewal,omitzero"`
	Reason           string      `json:"reason,omitempty"`
	Ineligible       string      `json:"ineligible,omitempty"`
	Paused           bool        `json:"paused,omitempty"` // maintenance mode (ccm pause)
	Version          string      `json:"version"`
	StartedAt        time.Time   `json:"startedAt"`
}

// Status reports the elector's state.
func (e *Elector) Status() any {
	s := e.State()
	e.mu.Lock()
	renewed, inel := e.renewed, e.ineligible
	e.mu.Unlock()
	st := Status{Node: e.node, Cluster: e.cluster, Role: s.Role, Epoch: s.Epoch, Leader: s.Leader,
		Reason: s.Reason, Version: e.version, StartedAt: e.started, Paused: e.paused()}
	if inel != nil {
		st.Ineligible = inel.Error()
	}
	if s.Role == schema.RoleLeader {
		st.LeaseDeadline, st.LastRenewal = s.Deadline, renewed
		st.LeaseRemainingMs = max(0, time.Until(s.Deadline).Milliseconds())
	}
	return st
}

// AddEndpoints adds promote, demote and leave.
func (e *Elector) AddEndpoints(g micro.Group) error {
	codes := natsconn.Codes{
		ErrNotLeader:   natsconn.CodeRefused,
		ErrUnknownNode: natsconn.CodeNotFound,
		ErrNotReady:    natsconn.CodeNotReady,
		ErrNotEligible: natsconn.CodeNotReady,
		ErrPaused:      natsconn.CodeRefused,
	}
	if err := g.AddEndpoint(schema.VerbPromote, natsconn.Handle(handoverTimeout+e.ttl, codes, func(ctx context.Context, _ micro.Request) (any, error) {
		return e.roleReply(e.Promote(ctx))
	})); err != nil {
		return err
	}
	if err := g.AddEndpoint(schema.VerbDemote, natsconn.Handle(handoverTimeout, codes, func(ctx context.Context, req micro.Request) (any, error) {
		var r schema.DemoteRequest
		if err := natsconn.Decode(req, &r); err != nil {
			return nil, err
		}
		if r.Automatic && e.paused() {
			e.log.Warn("refused an automatic demotion: the cluster is paused")
			return nil, ErrPaused
		}
		return e.roleReply(e.Demote(ctx, r.To))
	})); err != nil {
		return err
	}
	return g.AddEndpoint(schema.VerbLeave, natsconn.Handle(e.ttl, codes, func(ctx context.Context, _ micro.Request) (any, error) {
		return e.roleReply(e.Leave(ctx))
	}))
}

// roleReply is an endpoint's reply after a step that ended with err: this
// node's role, or the error.
func (e *Elector) roleReply(err error) (any, error) {
	if err != nil {
		return nil, err
	}
	s := e.State()
	return schema.RoleReply{Node: e.node, Role: s.Role, Epoch: s.Epoch, Leader: s.Leader}, nil
}

// Leave takes this passive node out of the cluster until the elector
// restarts: it no longer campaigns or writes its status, and its status key
// is removed. A leader must be demoted first.
func (e *Elector) Leave(ctx context.Context) error {
	return e.do(ctx, func(ctx context.Context) error {
		if e.State().Role == schema.RoleLeader {
			return fmt.Errorf("%w: demote this node before it leaves", ErrNotLeader)
		}
		e.left = true
		if err := e.kv.Delete(ctx, schema.NodeKey(e.node)); err != nil {
			return fmt.Errorf("remove status key: %w", err)
		}
		if e.settings != nil {
			if err := e.settings.Delete(ctx, schema.MemberKey(e.node)); err != nil {
				return fmt.Errorf("remove member key: %w", err)
			}
		}
		e.log.Info("left the cluster: not campaigning until restarted")
		return nil
	})
}

// handoverTimeout bounds a graceful demotion: the backend may take tens of
// seconds to drain before the WAL flush and the handover.
const handoverTimeout = 2 * time.Minute

// command is work for the election loop, which owns the KV state.
type command struct {
	run   func(ctx context.Context) error
	reply chan error
}

// do runs fn on the election loop.
func (e *Elector) do(ctx context.Context, fn func(ctx context.Context) error) error {
	c := command{run: fn, reply: make(chan error, 1)}
	select {
	case e.cmds <- c:
	case <-ctx.Done():
		return fmt.Errorf("election loop busy: %w", ctx.Err())
	}
	select {
	case err := <-c.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
