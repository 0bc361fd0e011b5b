// Package history records what the chaos campaign's clients did through
// the VIP and checks it: linearizability of a grow-only set with
// porcupine, acknowledged writes lost in a failover (with their age at
// the fault), and acknowledgements from a node whose term had ended.
package history

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Kind is an operation's kind.
type Kind int

// Operations on the set: Add inserts a value (unique in the run), Has
// asks whether a value is in it.
const (
	Add Kind = iota
	Has
)

// Outcome is what the client learnt.
type Outcome int

// Outcomes: OK (acknowledged; Has answered), Failed (refused: not
// applied, such as a refused connection), Unknown (timed out: it may or
// may not have been applied).
const (
	OK Outcome = iota
	Failed
	Unknown
)

// Op is one client operation.
type Op struct {
	Client       int
	Kind         Kind
	Value        string
	Call, Return time.Time
	Outcome      Outcome
	Present      bool   // Has, OK: the answer
	Node         string // the node that answered (OK only)
}

func (o Op) String() string {
	k := "add"
	if o.Kind == Has {
		k = fmt.Sprintf("has=%v", o.Present)
	}
	return fmt.Sprintf("client %d %s %s on %s [%s, %s]", o.Client, k, o.Value, o.Node,
		o.Call.Format("15:04:05.000"), o.Return.Format("15:04:05.000"))
}

// History is a concurrent log of operations.
type History struct {
	mu  sync.Mutex
	ops []Op
}

// Record appends op.
func (h *History) Record(op Op) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// Ops returns a copy of what was recorded.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ops)
}

// Acked returns the values whose Add was acknowledged.
func Acked(ops []Op) map[string]Op {
	out := map[string]Op{}
	for _, o := range ops {
		if o.Kind == Add && o.Outcome == OK {
			out[o.Value] = o
		}
	}
	return out
}

// Lost returns the acknowledged Adds whose value final does not hold,
// oldest first.
func Lost(ops []Op, final map[string]bool) []Op {
	var lost []Op
	for v, o := range Acked(ops) {
		if !final[v] {
			lost = append(lost, o)
		}
	}
	slices.SortFunc(lost, func(a, b Op) int { return a.Return.Compare(b.Return) })
	return lost
}

// setModel is a grow-only set partitioned by value: each value is a
// register that starts absent and becomes present when added.
var setModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			v := op.Input.(input).value
			if _, ok := by[v]; !ok {
				keys = append(keys, v)
			}
			by[v] = append(by[v], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() any { return false },
	Step: func(state, in, out any) (bool, any) {
		present := state.(bool)
		if in.(input).kind == Add {
			return true, true
		}
		return out.(bool) == present, present
	},
	DescribeOperation: func(in, out any) string {
		if in.(input).kind == Add {
			return "add " + in.(input).value
		}
		return fmt.Sprintf("has %s = %v", in.(input).value, out)
	},
}

type input struct {
	kind  Kind
	value string
}

// Anomaly is a value whose operations no order explains.
type Anomaly struct {
	Value string
	Ops   []Op
}

// Linearizable checks the operations on every value but those in skip
// (lost values, reported apart) against the set model. Failed operations
// took no effect and are left out; an Add that timed out may have taken
// effect at any time after its call; a Has that timed out says nothing.
// It returns the values no linearization explains.
func Linearizable(ops []Op, skip map[string]bool, timeout time.Duration) ([]Anomaly, error) {
	var hist []porcupine.Operation
	byValue := map[string][]Op{}
	for _, o := range ops {
		if skip[o.Value] || o.Outcome == Failed || o.Outcome == Unknown && o.Kind == Has {
			continue
		}
		ret := o.Return.UnixNano()
		if o.Outcome == Unknown {
			ret = math.MaxInt64
		}
		hist = append(hist, porcupine.Operation{ClientId: o.Client, Input: input{o.Kind, o.Value}, Call: o.Call.UnixNano(), Output: o.Present, Return: ret})
		byValue[o.Value] = append(byValue[o.Value], o)
	}
	var bad []Anomaly
	for _, part := range setModel.Partition(hist) {
		switch porcupine.CheckOperationsTimeout(porcupine.Model{Init: setModel.Init, Step: setModel.Step}, part, timeout) {
		case porcupine.Ok:
		case porcupine.Illegal:
			v := part[0].Input.(input).value
			bad = append(bad, Anomaly{Value: v, Ops: byValue[v]})
		default:
			return bad, fmt.Errorf("linearizability check of value %s timed out", part[0].Input.(input).value)
		}
	}
	return bad, nil
}

// Term is a node's tenure as leader: from the leader key's write that
// gave it the epoch until the next write (or the key's removal).
type Term struct {
	Node       string
	Epoch      uint64
	Start, End time.Time // End zero: still leading
}

// OutOfTerm returns the acknowledged operations answered by a node that
// held no term at any time between the operation's call and return.
func OutOfTerm(ops []Op, terms []Term) []Op {
	var out []Op
	for _, o := range ops {
		if o.Outcome != OK || o.Node == "" {
			continue
		}
		if !slices.ContainsFunc(terms, func(t Term) bool {
			return t.Node == o.Node && !t.Start.After(o.Return) && (t.End.IsZero() || !t.End.Before(o.Call))
		}) {
			out = append(out, o)
		}
	}
	return out
}

// LostAges says, for each lost operation, how long before its node's last
// acknowledgement in the same term it was acknowledged: a leader cut off
// from the WAL stream is frozen once its changes wait longer than a bound
// to be shipped, so what a failover loses is the tail of its term, no
// longer than the bound. It returns the ages, in lost's order, and the
// operations older than window (or in no term of their node).
func LostAges(ops, lost []Op, terms []Term, window time.Duration) ([]time.Duration, []Op) {
	var ages []time.Duration
	var beyond []Op
	for _, o := range lost {
		i := slices.IndexFunc(terms, func(t Term) bool {
			return t.Node == o.Node && !t.Start.After(o.Return) && (t.End.IsZero() || !t.End.Before(o.Call))
		})
		if i < 0 {
			ages = append(ages, -1)
			beyond = append(beyond, o)
			continue
		}
		term := terms[i]
		last := o.Return
		for _, a := range ops {
			if a.Outcome == OK && a.Node == o.Node && a.Return.After(last) && (term.End.IsZero() || !term.End.Before(a.Call)) {
				last = a.Return
			}
		}
		age := last.Sub(o.Return)
		ages = append(ages, age)
		if age > window {
			beyond = append(beyond, o)
		}
	}
	return ages, beyond
}
