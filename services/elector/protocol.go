package elector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// The promotion and handover protocol, in the order it runs:
//
//   - a node that wins the key brings itself up (startPromotion, bringUp:
//     drain, storage, database, shipping, backend) and is then ready;
//   - `ccm promote --node X` asks X (Promote), which asks the leader to
//     hand over to it; the leader (Demote) flushes storage while serving,
//     drains (not ready, backend stopped, final WAL and storage flushes),
//     then hands the key to X (resign) — a failed step serves again
//     (undrain) or steps down;
//   - X, given the key, brings itself up as above.

// promotionStep is reported by a promotion to the election loop.
type promotionStep struct {
	epoch uint64
	kind  EventKind // Prepared or Ready; 0 with err when the promotion failed
	err   error
}

// Bounds of the promotion's steps that do not depend on the configuration.
const (
	prepareTimeout = time.Minute
	shipTimeout    = 30 * time.Second
	// storageFlushTimeout bounds a demotion's storage flush while the
	// leader still serves: large uploads may be in flight.
	storageFlushTimeout = 5 * time.Minute
	// backendStopTimeout bounds a demotion's backend stop: the backend
	// drains the requests in flight (ccm-backend's stop gives up after a
	// minute too).
	backendStopTimeout = time.Minute
)

// promotionBound is the sum of the promotion steps' bounds: no promotion
// holds the key without serving for longer.
func (e *Elector) promotionBound() time.Duration {
	return 3*e.ttl + e.storageSync + time.Minute + prepareTimeout + shipTimeout + e.startTimeout
}

// drainBound is how long a demotion may hold the key without serving: the
// backend's stop, one TTL to flush, and the backend's start if it must
// serve again.
func (e *Elector) drainBound() time.Duration {
	return backendStopTimeout + e.ttl + e.startTimeout + e.ttl
}

// errSkipped means the daemon of a step does not run on this node.
var errSkipped = natsconn.ErrNotRunning

// startPromotion runs the promotion of epoch beside the loop, which keeps
// renewing the lease meanwhile; the loop applies each step it reports.
func (e *Elector) startPromotion(epoch uint64) {
	ctx := e.runCtx
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		report := func(s promotionStep) {
			select {
			case e.promotions <- s:
			case <-ctx.Done():
			}
		}
		if err := e.bringUp(ctx, epoch, report); err != nil {
			report(promotionStep{epoch: epoch, err: err})
		}
	}()
}

// bringUp brings this node from leader-elect to serving leader of epoch,
// each step a request with a timeout to one of the node's daemons; a daemon
// that does not run here is skipped:
//
//  1. ccm-walapply drains the stream into the shadow database and pauses;
//  2. ccm-storage waits until its mirror holds every file of the newest
//     manifest and moves it into the data path;
//  3. ccm-walapply releases the drained shadow database, if it holds data
//     (closes it for as long as the node leads);
//  4. ccm-backend moves the shadow database into the data path (Prepared:
//     ccm-walship opens the epoch on the stream and ships);
//  5. ccm-walship reports shipping epoch;
//  6. ccm-backend starts the backend and waits for its health check
//     (Ready: ccm-vip takes the VIP).
func (e *Elector) bringUp(ctx context.Context, epoch uint64, report func(promotionStep)) error {
	start := time.Now()
	// Each step is logged as it starts: the node holds the key without
	// serving until the last one ends, and a hung step must be named.
	step := func(what string) {
		e.log.Info("promotion step", "epoch", epoch, "step", what, "after", time.Since(start).Round(time.Millisecond))
	}
	step("walapply drain")
	drained, err := e.call(ctx, schema.ServiceWalapply, schema.VerbDrain, nil, 3*e.ttl)
	if err != nil && !errors.Is(err, errSkipped) {
		return fmt.Errorf("drain the WAL stream: %w", err)
	}
	if errors.Is(err, errSkipped) {
		// No shadow to drain: the data path's database would open the
		// epoch, and only an unreplicated cluster may start from it.
		if held, herr := e.streamHeldData(ctx); herr != nil || held {
			return fmt.Errorf("ccm-walapply does not run on this node, and the WAL stream has held data (or cannot be read: %v): this node's database may be behind it", herr)
		}
	}
	var shadow struct {
		Epoch    uint64 `json:"epoch"`
		TXID     uint64 `json:"txid"`
		PageSize uint32 `json:"pageSize"`
	}
	hasApply := err == nil
	if hasApply {
		json.Unmarshal(drained, &shadow)
	}
	step("storage drain")
	if _, err := e.callStorage(ctx, schema.VerbDrain, schema.EpochRequest{Epoch: epoch}, e.storageSync+time.Minute); err != nil && !errors.Is(err, errSkipped) {
		return fmt.Errorf("bring the storage directory in sync: %w", err)
	}
	if hasApply {
		step("walapply release")
		if _, err := e.call(ctx, schema.ServiceWalapply, schema.VerbRelease, nil, prepareTimeout); err != nil && !errors.Is(err, errSkipped) {
			return fmt.Errorf("release the shadow database: %w", err)
		}
	}
	step("backend prepare")
	_, err = e.call(ctx, schema.ServiceBackend, schema.VerbPrepare, schema.EpochRequest{Epoch: epoch}, prepareTimeout)
	switch {
	case errors.Is(err, errSkipped) && shadow.PageSize != 0:
		// Shipping the data path's database instead would go back in time.
		return fmt.Errorf("the drained shadow database (epoch %d TXID %d) must be installed, but ccm-backend does not answer", shadow.Epoch, shadow.TXID)
	case err != nil && !errors.Is(err, errSkipped):
		return fmt.Errorf("install the database: %w", err)
	}
	report(promotionStep{epoch: epoch, kind: Prepared})
	step("walship opens the epoch")
	if err := e.waitShipping(ctx, epoch); err != nil && !errors.Is(err, errSkipped) {
		return fmt.Errorf("open the epoch on the WAL stream: %w", err)
	}
	step("backend start")
	if _, err := e.call(ctx, schema.ServiceBackend, schema.VerbStart, schema.EpochRequest{Epoch: epoch}, e.startTimeout); err != nil && !errors.Is(err, errSkipped) {
		return fmt.Errorf("start the backend: %w", err)
	}
	report(promotionStep{epoch: epoch, kind: Ready})
	e.log.Info("promotion complete", "epoch", epoch, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// waitShipping polls ccm-walship until it ships epoch.
func (e *Elector) waitShipping(ctx context.Context, epoch uint64) error {
	ctx, cancel := context.WithTimeout(ctx, shipTimeout)
	defer cancel()
	for {
		b, err := e.call(ctx, schema.ServiceWalship, schema.VerbStatus, nil, time.Second)
		if err != nil && (errors.Is(err, errSkipped) || ctx.Err() != nil) {
			return err
		}
		var st struct {
			Status struct {
				Shipping bool   `json:"shipping"`
				Epoch    uint64 `json:"epoch"`
				Refused  uint64 `json:"refusedEpoch"`
				Error    string `json:"error"`
			} `json:"status"`
		}
		if err == nil && json.Unmarshal(b, &st) == nil {
			switch {
			case st.Status.Shipping && st.Status.Epoch == epoch:
				return nil
			case st.Status.Refused == epoch:
				return fmt.Errorf("ccm-walship refuses epoch %d: %s", epoch, st.Status.Error)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ccm-walship not shipping epoch %d (last: %s): %w", epoch, st.Status.Error, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// call requests verb of a daemon on this node; errSkipped if it does not run.
func (e *Elector) call(ctx context.Context, daemon, verb string, body any, timeout time.Duration) ([]byte, error) {
	return natsconn.Call(ctx, e.nc, e.cluster, e.node, daemon, verb, body, timeout)
}

// callStorage is call for ccm-storage, skipped only where it does not run:
// a ccm-storage that is briefly away would leave files behind.
func (e *Elector) callStorage(ctx context.Context, verb string, body any, timeout time.Duration) ([]byte, error) {
	b, err := e.call(ctx, schema.ServiceStorage, verb, body, timeout)
	return b, natsconn.CheckAway(ctx, e.js, e.cluster, schema.StorageKey(e.node), err)
}

// onPromotion applies a promotion step reported to the loop; a failed
// promotion gives the leadership up so that another node can try.
func (e *Elector) onPromotion(ctx context.Context, s promotionStep) {
	cur := e.State()
	if cur.Role != schema.RoleLeader || cur.Epoch != s.epoch {
		return // stale: this node no longer leads that epoch
	}
	if s.err != nil {
		e.log.Error("promotion failed: giving up leadership", "epoch", s.epoch, "err", s.err)
		e.resign(ctx, "", "promotion failed: "+s.err.Error())
		return
	}
	e.apply(Event{Kind: s.kind, Epoch: s.epoch})
	e.publish(e.State())
	if s.kind == Ready {
		// The key says so at once (ccm status: serving), not at the next heartbeat.
		if err := e.renewAt(ctx, s.epoch, e.since); err != nil {
			e.log.Debug("renewal after serving", "err", err)
		}
		e.placeStreams(true)
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
			e.contest(ctx)
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
	_, err = natsconn.Call(ctx, e.nc, e.cluster, current, schema.ServiceElector, schema.VerbDemote, schema.DemoteRequest{To: e.node}, time.Hour)
	var refused *natsconn.CallError
	if errors.As(err, &refused) {
		return fmt.Errorf("leader %s refused to hand over: %s %s", current, refused.Code, refused.Description)
	}
	if err != nil {
		return fmt.Errorf("ask leader %s to hand over: %w", current, err)
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
	if _, err := e.callStorage(ctx, schema.VerbFlush, nil, storageFlushTimeout); err != nil && !errors.Is(err, errSkipped) {
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
	if _, err := e.call(bctx, schema.ServiceBackend, schema.VerbStop, schema.EpochRequest{Epoch: epoch}, backendStopTimeout); err != nil && !errors.Is(err, errSkipped) {
		return e.undrain(epoch, "stopping the backend", err)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.ttl)
	defer cancel()
	var lost error // the leader's changes cannot be shipped at all
	if _, err := e.call(dctx, schema.ServiceWalship, schema.VerbFlush, nil, e.ttl); err != nil && !errors.Is(err, errSkipped) {
		if !natsconn.HasCode(err, natsconn.CodeRefused) {
			return e.undrain(epoch, "the final WAL flush", err)
		}
		// Not shipping (its appends were fenced): serving on would only
		// add writes that no other node will have.
		lost = err
	}
	if _, err := e.callStorage(dctx, schema.VerbFlush, nil, e.ttl); err != nil && !errors.Is(err, errSkipped) {
		return e.undrain(epoch, "the final storage flush", err)
	}
	reason := "switchover: stepped down, the key released to the others"
	if to != "" {
		reason = "switchover: handed over to " + to
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
	_, err := e.call(ctx, schema.ServiceBackend, schema.VerbStart, schema.EpochRequest{Epoch: epoch}, e.startTimeout)
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
