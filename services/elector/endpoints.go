package elector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
		Reason: s.Reason, Version: e.version, StartedAt: e.started}
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
	if err := g.AddEndpoint("promote", micro.HandlerFunc(e.handlePromote)); err != nil {
		return err
	}
	if err := g.AddEndpoint("demote", micro.HandlerFunc(e.handleDemote)); err != nil {
		return err
	}
	return g.AddEndpoint("leave", micro.HandlerFunc(func(req micro.Request) {
		ctx, cancel := context.WithTimeout(context.Background(), e.ttl)
		defer cancel()
		e.respond(req, e.Leave(ctx))
	}))
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
		e.log.Info("left the cluster: not campaigning until restarted")
		return nil
	})
}

// handoverTimeout bounds a graceful demotion: the backend may take tens of
// seconds to drain before the WAL flush and the handover.
const handoverTimeout = 2 * time.Minute

func (e *Elector) handlePromote(req micro.Request) {
	ctx, cancel := context.WithTimeout(context.Background(), handoverTimeout+e.ttl)
	defer cancel()
	e.respond(req, e.Promote(ctx))
}

func (e *Elector) handleDemote(req micro.Request) {
	var r schema.DemoteRequest
	if len(req.Data()) > 0 {
		if err := json.Unmarshal(req.Data(), &r); err != nil {
			req.Error("400", fmt.Sprintf("invalid demote request %q: %v", req.Data(), err), nil)
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), handoverTimeout)
	defer cancel()
	e.respond(req, e.Demote(ctx, r.To))
}

func (e *Elector) respond(req micro.Request, err error) {
	if err != nil {
		code := "500"
		switch {
		case errors.Is(err, ErrNotLeader):
			code = "409"
		case errors.Is(err, ErrUnknownNode):
			code = "404"
		case errors.Is(err, ErrNotReady), errors.Is(err, ErrNotEligible):
			code = "503"
		}
		req.Error(code, err.Error(), nil)
		return
	}
	s := e.State()
	req.RespondJSON(schema.RoleReply{Node: e.node, Role: s.Role, Epoch: s.Epoch, Leader: s.Leader})
}

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

// Promote makes this node the leader: at once if the key is vacant,
// otherwise by asking the current leader to hand over to this node. It
// returns once this node leads, or with the reason it could not.
func (e *Elector) Promote(ctx context.Context) error {
	var current string
	err := e.do(ctx, func(ctx context.Context) error {
		s := e.State()
		switch {
		case s.Role == schema.RoleLeader:
			return nil
		case s.Role == schema.RoleStarting:
			return ErrNotReady
		case e.left:
			return fmt.Errorf("%w: this node has left the cluster", ErrNotEligible)
		}
		ent, err := e.kv.Get(ctx, schema.KeyLeader)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
			if _, err := e.eligible(ctx); err != nil {
				return fmt.Errorf("%w: %w", ErrNotEligible, err)
			}
			e.holdOff = time.Time{}
			e.campaign(ctx)
			if e.State().Role != schema.RoleLeader {
				return fmt.Errorf("campaign lost: another node took the vacant leader key")
			}
			return nil
		case err != nil:
			return fmt.Errorf("read leader key: %w", err)
		}
		rec, err := decodeLeader(ent)
		if err != nil {
			return err
		}
		if rec.HandoverTo == e.node {
			e.take(ctx, ent.Revision(), rec)
			if e.State().Role != schema.RoleLeader {
				return fmt.Errorf("%w: this node refused the handover addressed to it", ErrNotEligible)
			}
			return nil
		}
		if _, err := e.eligible(ctx); err != nil {
			return fmt.Errorf("%w: %w", ErrNotEligible, err)
		}
		current = rec.Node
		return nil
	})
	if err != nil || current == "" {
		return err
	}
	body, _ := json.Marshal(schema.DemoteRequest{To: e.node})
	msg, err := e.nc.RequestWithContext(ctx, schema.Endpoint(e.cluster, current, schema.ServiceElector, "demote"), body)
	if err != nil {
		return fmt.Errorf("ask leader %s to hand over: %w", current, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return fmt.Errorf("leader %s refused to hand over: %s %s", current, code, msg.Header.Get(micro.ErrorHeader))
	}
	return e.waitRole(ctx, schema.RoleLeader)
}

// Demote makes this leader step down gracefully. While it still serves,
// it publishes the storage files written so far (the bulk of the flush; a
// ccm-storage that does not answer aborts the demotion before anything
// stopped). Then it drains: the role event says not ready (the VIP goes),
// the backend is stopped (it drains its requests in flight), and within
// one TTL everything committed is flushed to the WAL stream and the last
// storage files to the file store. Only
// then does it hand the key to the node named to, or delete it so that
// the others campaign. The lease is renewed throughout; a drain step that
// fails or overruns makes the node serve again (undrain).
func (e *Elector) Demote(ctx context.Context, to string) error {
	var epoch uint64
	err := e.do(ctx, func(ctx context.Context) error {
		s := e.State()
		if s.Role != schema.RoleLeader {
			if s.Leader != "" {
				return fmt.Errorf("%w: the leader is %s", ErrNotLeader, s.Leader)
			}
			return ErrNotLeader
		}
		if to == e.node {
			return fmt.Errorf("%w: cannot hand over to itself (%s)", ErrUnknownNode, to)
		}
		if to != "" {
			if _, err := e.kv.Get(ctx, schema.NodeKey(to)); err != nil {
				return fmt.Errorf("%w %q: no live status for it in %s: %v", ErrUnknownNode, to, schema.Bucket(e.cluster), err)
			}
			// Handing over to a node behind the stream would roll the
			// cluster back to its database.
			if _, err := e.eligibleNode(ctx, to); err != nil {
				return fmt.Errorf("%w: %s: %w", ErrNotEligible, to, err)
			}
		}
		epoch = s.Epoch
		return nil
	})
	if err != nil {
		return err
	}
	if _, err := e.callStorage(ctx, "flush", nil, storageFlushTimeout); err != nil && !errors.Is(err, errSkipped) {
		return fmt.Errorf("demotion aborted before it stopped serving: the storage flush failed: %w", err)
	}
	err = e.do(ctx, func(ctx context.Context) error {
		if s := e.State(); s.Role != schema.RoleLeader || s.Epoch != epoch {
			return fmt.Errorf("%w: no longer the leader of epoch %d (%s)", ErrNotLeader, epoch, s.Reason)
		}
		e.apply(Event{Kind: Draining})
		e.publish(e.State())
		return nil
	})
	if err != nil {
		return err
	}
	// From here the node holds the key without serving. The backend
	// drains its requests in flight first (its own time, bounded by
	// backendStopTimeout); the flushes after it share one TTL.
	bctx, bcancel := context.WithTimeout(context.WithoutCancel(ctx), backendStopTimeout)
	defer bcancel()
	if _, err := e.call(bctx, schema.ServiceBackend, "stop", PrepareRequest{Epoch: epoch}, backendStopTimeout); err != nil && !errors.Is(err, errSkipped) {
		return e.undrain(epoch, "stopping the backend", err)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.ttl)
	defer cancel()
	var lost error // the leader's changes cannot be shipped at all
	if _, err := e.call(dctx, schema.ServiceWalship, "flush", nil, e.ttl); err != nil && !errors.Is(err, errSkipped) {
		if !natsconn.HasCode(err, "409") {
			return e.undrain(epoch, "the final WAL flush", err)
		}
		// Not shipping (its appends were fenced): serving on would only
		// add writes that no other node will have.
		lost = err
	}
	if _, err := e.callStorage(dctx, "flush", nil, e.ttl); err != nil && !errors.Is(err, errSkipped) {
		return e.undrain(epoch, "the final storage flush", err)
	}
	reason := "demoted"
	if to != "" {
		reason = "handing over to " + to
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), e.ttl)
	defer rcancel()
	err = e.do(rctx, func(ctx context.Context) error {
		if s := e.State(); s.Role != schema.RoleLeader || s.Epoch != epoch {
			return fmt.Errorf("%w: leadership of epoch %d was lost while draining", ErrNotLeader, epoch)
		}
		return e.resign(ctx, to, reason)
	})
	if err == nil && lost != nil {
		e.log.Error("demote: stepped down, but this node's WAL could not be shipped: changes since its last shipped file exist only here", "err", lost)
		return fmt.Errorf("stepped down, but this node could not ship its WAL (%w): changes since its last shipped file exist only in its data path, set aside at its next promotion", lost)
	}
	return err
}

// undrain makes a leader whose graceful demotion failed at step serve
// again (start the backend, say ready), so that it never holds the key
// without serving; if the backend does not start, it steps down. It runs
// on its own deadline: the demotion's may have passed.
func (e *Elector) undrain(epoch uint64, step string, cause error) error {
	e.log.Error("demote: "+step+" failed: serving again", "err", cause)
	ctx, cancel := context.WithTimeout(e.runCtx, e.startTimeout+e.ttl)
	defer cancel()
	_, err := e.call(ctx, schema.ServiceBackend, "start", PrepareRequest{Epoch: epoch}, e.startTimeout)
	if err != nil && !errors.Is(err, errSkipped) {
		e.log.Error("demote: the backend does not start again: stepping down", "err", err)
		e.do(ctx, func(ctx context.Context) error {
			if s := e.State(); s.Role == schema.RoleLeader && s.Epoch == epoch {
				return e.resign(ctx, "", "demotion failed and the backend does not start again")
			}
			return nil
		})
		return fmt.Errorf("demotion failed: %s: %w; the backend did not start again (%v): stepped down without a handover", step, cause, err)
	}
	e.do(ctx, func(ctx context.Context) error {
		if s := e.State(); s.Role == schema.RoleLeader && s.Epoch == epoch {
			e.apply(Event{Kind: Ready, Epoch: epoch})
			e.publish(e.State())
		}
		return nil
	})
	return fmt.Errorf("demotion aborted, still serving: %s failed: %w", step, cause)
}

// resign steps down locally, then hands the key over to to (or releases
// it), holding off campaigning so that another node takes it.
func (e *Elector) resign(ctx context.Context, to, reason string) error {
	s := e.State()
	e.apply(Event{Kind: Resigned, Reason: reason})
	now := time.Now()
	if to != "" {
		e.holdOff = now.Add(e.ttl)
		rec := schema.LeaderRecord{Node: e.node, Epoch: s.Epoch, Since: e.since, RenewedAt: now,
			LeaderTTLMs: e.ttl.Milliseconds(), HandoverTo: to}
		if _, err := e.kv.Update(ctx, schema.KeyLeader, encode(rec), e.rev); err != nil {
			return fmt.Errorf("stepped down, but the handover write failed (the key expires within %s): %w", e.ttl, err)
		}
		return nil
	}
	e.holdOff = now.Add(2 * e.heartbeat)
	if err := e.kv.Delete(ctx, schema.KeyLeader, jetstream.LastRevision(e.rev)); err != nil {
		return fmt.Errorf("stepped down, but releasing the key failed (it expires within %s): %w", e.ttl, err)
	}
	return nil
}

// waitRole waits until the node has role r.
func (e *Elector) waitRole(ctx context.Context, r schema.Role) error {
	for {
		e.mu.Lock()
		s, ch := e.state, e.changed
		e.mu.Unlock()
		if s.Role == r {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("still %s (leader %q) waiting to become %s: %w", s.Role, s.Leader, r, ctx.Err())
		}
	}
}
