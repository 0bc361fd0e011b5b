package epochlog

import (
	"slices"
	"time"
)

// Term is one epoch of the history: who led it, from when, since when its
// backend served, until when and why it ended.
type Term struct {
	Epoch     uint64    `json:"epoch"`
	Node      string    `json:"node"`
	Began     time.Time `json:"began"`
	HowBegan  string    `json:"howBegan,omitempty"`
	Served    time.Time `json:"served,omitzero"` // zero: its backend never served
	Ended     time.Time `json:"ended,omitzero"`  // zero: it still leads (or its end is not known yet)
	HowEnded  string    `json:"howEnded,omitempty"`
	Recovered bool      `json:"recovered,omitempty"` // its end was not recorded: inferred from the next epoch
	// Notes are what else happened during the term: "paused (reason)", "resumed", with their times.
	Notes []Note `json:"notes,omitempty"`
}

// Note is an event during a term.
type Note struct {
	At   time.Time `json:"at"`
	What string    `json:"what"`
}

// NoEnd is the reason given to an epoch whose leader recorded no end
// before a later epoch began.
const NoEnd = "no end recorded: the leader crashed, froze or was cut off, and its lease expired"

// Terms folds events into one term per epoch, oldest first. A term whose
// end was not recorded (its leader crashed or was cut off) ends where the
// next one begins.
func Terms(events []Event) []Term {
	byEpoch := map[uint64]*Term{}
	for _, ev := range events {
		t := byEpoch[ev.Epoch]
		if t == nil {
			t = &Term{Epoch: ev.Epoch, Node: ev.Node}
			byEpoch[ev.Epoch] = t
		}
		switch ev.Kind {
		case Began:
			if t.Began.IsZero() { // not a resumption after an elector restart
				t.Began, t.HowBegan = ev.At, ev.Reason
			}
		case Serving:
			if t.Served.IsZero() {
				t.Served = ev.At
			}
		case Ended:
			t.Ended, t.HowEnded = ev.At, ev.Reason
		case Paused, Resumed:
			what := ev.Kind
			if ev.Reason != "" {
				what += " (" + ev.Reason + ")"
			}
			t.Notes = append(t.Notes, Note{At: ev.At, What: what})
		}
	}
	var out []Term
	for _, t := range byEpoch {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b Term) int {
		switch {
		case a.Epoch < b.Epoch:
			return -1
		case a.Epoch > b.Epoch:
			return 1
		}
		return 0
	})
	for i := range out {
		if out[i].Began.IsZero() {
			out[i].Began = first(out[i].Served, out[i].Ended)
		}
		if i+1 < len(out) && out[i].Ended.IsZero() {
			out[i].Ended, out[i].HowEnded, out[i].Recovered = out[i+1].Began, NoEnd, true
		}
	}
	return out
}

func first(ts ...time.Time) time.Time {
	for _, t := range ts {
		if !t.IsZero() {
			return t
		}
	}
	return time.Time{}
}
