//go:build integration

package itest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/convex-cluster-manager/ccm/itest/history"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// ElectorTerms reads every node's terms from its elector's journal since
// since: a term begins when the elector logs that it won an epoch, and
// ends when the next term (any node's) begins. (A watch of the leader
// key from the host cannot do it: the key keeps one revision, and a watch
// that reconnects after a partition skips the revisions it missed.)
func (c *Cluster) ElectorTerms(t *testing.T, since time.Time) []history.Term {
	t.Helper()
	var terms []history.Term
	for _, n := range c.Nodes {
		out := n.Must(t, "journalctl", "--no-pager", "-o", "cat", "-u", "ccm-elector", "--since", since.UTC().Format("2006-01-02 15:04:05"), "--utc")
		for _, line := range strings.Split(out, "\n") {
			var ev struct {
				Time  time.Time `json:"time"`
				Msg   string    `json:"msg"`
				To    string    `json:"to"`
				Epoch uint64    `json:"epoch"`
			}
			if json.Unmarshal([]byte(line), &ev) != nil || ev.Msg != "role changed" || ev.To != string(schema.RoleLeader) {
				continue
			}
			terms = append(terms, history.Term{Node: n.Name, Epoch: ev.Epoch, Start: ev.Time})
		}
	}
	slices.SortFunc(terms, func(a, b history.Term) int { return a.Start.Compare(b.Start) })
	for i := range terms[:max(len(terms)-1, 0)] {
		terms[i].End = terms[i+1].Start
	}
	return terms
}

// Clients add values through the VIP and read them back, from the host,
// recording every operation.
type Clients struct {
	h      history.History
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartClients starts three adders (each value unique: prefix-client-i;
// every tenth also uploads a storage file) and two readers (asking for
// the newest acknowledged value, or a random one), each about every 20 ms.
func (c *Cluster) StartClients(t *testing.T, prefix string) *Clients {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cl := &Clients{cancel: cancel}
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	base := "http://" + c.VIP + ":3210"
	var mu sync.Mutex
	var acked []string
	for id := range 5 {
		cl.wg.Add(1)
		go func() {
			defer cl.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
			for i := 0; ctx.Err() == nil; i++ {
				op := history.Op{Client: id}
				var req *http.Request
				if id < 3 {
					op.Kind, op.Value = history.Add, fmt.Sprintf("%s-%d-%d", prefix, id, i)
					req, _ = http.NewRequest(http.MethodPost, base+"/write?v="+op.Value, nil)
				} else {
					mu.Lock()
					if len(acked) == 0 {
						mu.Unlock()
						time.Sleep(20 * time.Millisecond)
						continue
					}
					op.Kind, op.Value = history.Has, acked[len(acked)-1]
					if rng.IntN(2) == 0 {
						op.Value = acked[rng.IntN(len(acked))]
					}
					mu.Unlock()
					req, _ = http.NewRequest(http.MethodGet, base+"/has?v="+op.Value, nil)
				}
				op.Call = time.Now()
				body, node, outcome := do(hc, req)
				op.Return, op.Outcome, op.Node = time.Now(), outcome, node
				if outcome == history.OK && op.Kind == history.Has {
					op.Present = strings.TrimSpace(body) == "1"
				}
				cl.h.Record(op)
				if outcome == history.OK && op.Kind == history.Add {
					mu.Lock()
					acked = append(acked, op.Value)
					mu.Unlock()
					if i%10 == 0 {
						up, _ := http.NewRequest(http.MethodPost, base+"/storage?f=chaos/"+op.Value, strings.NewReader(op.Value))
						do(hc, up)
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	return cl
}

// do runs req: OK with the body and the answering node; Failed when it
// was never sent (the connection was refused or had no route); Unknown
// otherwise (a timeout, or an error answer that may follow a commit).
func do(hc *http.Client, req *http.Request) (string, string, history.Outcome) {
	resp, err := hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return "", "", history.Failed
		}
		return "", "", history.Unknown
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return "", "", history.Unknown
	}
	return string(b), resp.Header.Get("X-Node"), history.OK
}

// Stop stops the clients and returns what they did.
func (cl *Clients) Stop(t *testing.T) []history.Op {
	t.Helper()
	cl.cancel()
	cl.wg.Wait()
	return cl.h.Ops()
}

// WaitAnyServing waits until some node holds the VIP, its backend answers
// on it and its ccm status names it the leader, and returns it. (The
// leader key may still name a deposed leader while JetStream recovers
// from a partition: waiting for the key's node would wait for the wrong
// one.)
func (c *Cluster) WaitAnyServing(t *testing.T, within time.Duration) *Node {
	t.Helper()
	var l *Node
	Eventually(t, within, "a leader serving on the VIP", func() bool {
		for _, n := range c.Nodes {
			if !n.HasVIP(t, c.VIP) {
				continue
			}
			if st := n.Status(t); st.Leader == nil || st.Leader.Node != n.Name || st.Leader.HandoverTo != "" {
				return false
			}
			if code, _ := c.Client.Exec(t, "curl", "-sf", "-m", "1", "http://"+c.VIP+":3210/version"); code != 0 {
				return false
			}
			l = n
			return true
		}
		return false
	})
	return l
}
