package elector_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/epochlog"
	"github.com/convex-cluster-manager/ccm/shared/waitfor"
)

// TestHistoryRecordsEveryTerm: a switchover and a leader's crash leave
// three terms in the history: the first ended by the handover, the second
// without a recorded end (inferred from the third's start), the third
// still leading; each with its node and the time its backend served.
func TestHistoryRecordsEveryTerm(t *testing.T) {
	c := startCluster(t, 3)
	first := waitLeader(t, c.nodes, testTTL)
	ctx := context.Background()
	to := others(c.nodes, first)[0]
	require.NoError(t, first.El.Demote(ctx, to.ID))
	second := waitLeader(t, c.nodes, time.Second)
	waitfor.Cond(t, testTTL, func() error {
		if !second.El.State().Ready {
			return fmt.Errorf("%s not serving yet", second.ID)
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // its events published
	second.Stop()
	third := waitLeader(t, others(c.nodes, second), 2*testTTL)

	js, err := jetstream.New(c.nc)
	require.NoError(t, err)
	var terms []epochlog.Term
	waitfor.Cond(t, 5*time.Second, func() error {
		events, err := epochlog.Read(ctx, js, c.name)
		if err != nil {
			return err
		}
		terms = epochlog.Terms(events)
		if len(terms) != 3 || terms[2].Served.IsZero() {
			return fmt.Errorf("terms %+v, want 3, the last serving", terms)
		}
		return nil
	})
	for _, tm := range terms {
		t.Logf("epoch %d %s began %s (%s) served +%s ended +%s (%s)", tm.Epoch, tm.Node, tm.Began.Format("15:04:05.000"),
			tm.HowBegan, tm.Served.Sub(tm.Began), tm.Ended.Sub(tm.Began), tm.HowEnded)
	}
	for i, want := range []string{first.ID, second.ID, third.ID} {
		if terms[i].Node != want || terms[i].Served.IsZero() || terms[i].Began.IsZero() {
			t.Errorf("term %d: %+v, want led by %s and served", i, terms[i], want)
		}
	}
	if !(terms[0].Epoch < terms[1].Epoch && terms[1].Epoch < terms[2].Epoch) {
		t.Errorf("epochs not increasing: %d, %d, %d", terms[0].Epoch, terms[1].Epoch, terms[2].Epoch)
	}
	if terms[0].Recovered || terms[0].Ended.IsZero() || terms[0].HowEnded != "switchover: handed over to "+to.ID || !strings.Contains(terms[1].HowBegan, "handover from "+first.ID) {
		t.Errorf("the switchover: first term %+v, second began %q", terms[0], terms[1].HowBegan)
	}
	if !terms[1].Recovered || !terms[1].Ended.Equal(terms[2].Began) || terms[1].HowEnded != epochlog.NoEnd {
		t.Errorf("the crashed leader's term: %+v, want its end inferred from the next term's start", terms[1])
	}
	if !terms[2].Ended.IsZero() {
		t.Errorf("the current term has ended: %+v", terms[2])
	}
}
