package elector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// promotionStep is reported by a promotion to the election loop.
type promotionStep struct {
	epoch uint64
	kind  EventKind // Prepared or Ready; 0 with err when the promotion failed
	err   error
}

// PrepareRequest is the body of ccm-backend's prepare and start requests.
type PrepareRequest struct {
	Epoch uint64 `json:"epoch"`
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
		if err := e.promote(ctx, epoch, report); err != nil {
			report(promotionStep{epoch: epoch, err: err})
		}
	}()
}

// promote brings this node from leader-elect to serving leader of epoch,
// each step a request with a timeout to one of the node's daemons; a daemon
// that does not run here is skipped:
//
//  1. ccm-walapply drains the stream into the shadow database and pauses;
//  2. ccm-storage waits until its mirror holds every file of the newest
//     manifest and moves it into the data path;
//  3. ccm-backend moves the shadow database into the data path (Prepared:
//     ccm-walship opens the epoch on the stream and ships);
//  4. ccm-walship reports shipping epoch;
//  5. ccm-backend starts the backend and waits for its health check
//     (Ready: ccm-vip takes the VIP).
func (e *Elector) promote(ctx context.Context, epoch uint64, report func(promotionStep)) error {
	start := time.Now()
	// Each step is logged as it starts: the node holds the key without
	// serving until the last one ends, and a hung step must be named.
	step := func(what string) {
		e.log.Info("promotion step", "epoch", epoch, "step", what, "after", time.Since(start).Round(time.Millisecond))
	}
	step("walapply drain")
	drained, err := e.call(ctx, schema.ServiceWalapply, "drain", nil, 3*e.ttl)
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
	if err == nil {
		json.Unmarshal(drained, &shadow)
	}
	step("storage drain")
	if _, err := e.callStorage(ctx, "drain", PrepareRequest{Epoch: epoch}, e.storageSync+time.Minute); err != nil && !errors.Is(err, errSkipped) {
		return fmt.Errorf("bring the storage directory in sync: %w", err)
	}
	step("backend prepare")
	_, err = e.call(ctx, schema.ServiceBackend, "prepare", PrepareRequest{Epoch: epoch}, prepareTimeout)
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
	if _, err := e.call(ctx, schema.ServiceBackend, "start", PrepareRequest{Epoch: epoch}, e.startTimeout); err != nil && !errors.Is(err, errSkipped) {
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
		b, err := e.call(ctx, schema.ServiceWalship, "status", nil, time.Second)
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
		e.placeStreams(true)
	}
}
