package elector

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// check is the answer of a load-balancer endpoint.
type check struct {
	Node    string      `json:"node"`
	Role    schema.Role `json:"role"`
	Epoch   uint64      `json:"epoch"`
	Leader  string      `json:"leader,omitempty"`
	Serving bool        `json:"serving"`
	LagMs   *int64      `json:"lagMs,omitempty"`
	Reason  string      `json:"reason,omitempty"` // why not 200
}

// AddHTTP adds the load-balancer checks (Patroni's REST endpoints) to the
// elector's metrics port: GET /leader (and /primary) answers 200 only on
// the serving leader within its lease; GET /replica 200 on a passive that
// applies the WAL stream, within ?max_lag_ms= if given; GET /health 200
// while the election loop runs. Anything else is 503, with the reason.
func (e *Elector) AddHTTP(mux *http.ServeMux) {
	leader := func(w http.ResponseWriter, r *http.Request) {
		s := e.State()
		c := check{Node: e.node, Role: s.Role, Epoch: s.Epoch, Leader: s.Leader}
		switch {
		case s.Role != schema.RoleLeader:
			c.Reason = "not the leader"
		case !s.Ready:
			c.Reason = "promoting: the backend does not serve yet"
		case !time.Now().Before(s.Deadline):
			c.Reason = "the lease ended"
		default:
			c.Serving = true
		}
		answer(w, c)
	}
	mux.HandleFunc("GET /leader", leader)
	mux.HandleFunc("GET /primary", leader)
	mux.HandleFunc("GET /replica", func(w http.ResponseWriter, r *http.Request) {
		s := e.State()
		c := check{Node: e.node, Role: s.Role, Epoch: s.Epoch, Leader: s.Leader}
		maxLag := int64(-1)
		if v := r.URL.Query().Get("max_lag_ms"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				http.Error(w, fmt.Sprintf("max_lag_ms=%q: want a number of milliseconds", v), http.StatusBadRequest)
				return
			}
			maxLag = n
		}
		if s.Role != schema.RolePassive {
			c.Reason = "not a passive"
			answer(w, c)
			return
		}
		st, err := e.applyStatus(r.Context())
		switch {
		case err != nil:
			c.Reason = err.Error()
		case st.State != schema.ApplyFollowing:
			c.Reason = fmt.Sprintf("replication %s %s", st.State, st.Error)
		case time.Since(st.UpdatedAt) > 3*time.Second:
			c.Reason = fmt.Sprintf("ccm-walapply's status is %s old", time.Since(st.UpdatedAt).Round(time.Second))
		default:
			c.LagMs = &st.LagMs
			if maxLag >= 0 && st.LagMs > maxLag {
				c.Reason = fmt.Sprintf("%d ms behind the leader (max_lag_ms %d)", st.LagMs, maxLag)
			} else {
				c.Serving = true
			}
		}
		answer(w, c)
	})
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		s := e.State()
		c := check{Node: e.node, Role: s.Role, Epoch: s.Epoch, Leader: s.Leader, Serving: true}
		if err := e.Healthy(); err != nil {
			c.Serving, c.Reason = false, err.Error()
		} else if s.Role == schema.RoleStarting {
			c.Serving, c.Reason = false, "starting"
		}
		answer(w, c)
	})
}

// applyStatus reads this node's replication status (written every second
// by its ccm-walapply).
func (e *Elector) applyStatus(ctx context.Context) (schema.ApplyStatus, error) {
	var st schema.ApplyStatus
	if e.kv == nil {
		return st, fmt.Errorf("not connected to NATS yet")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	ent, err := e.kv.Get(ctx, schema.ApplyKey(e.node))
	if err != nil {
		return st, fmt.Errorf("no replication status (is ccm-walapply running?): %w", err)
	}
	if err := json.Unmarshal(ent.Value(), &st); err != nil {
		return st, fmt.Errorf("replication status: %w", err)
	}
	return st, nil
}

// answer writes c as JSON: 200 when it serves what was asked, else 503.
func answer(w http.ResponseWriter, c check) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !c.Serving {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(c)
}
