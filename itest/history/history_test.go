package history

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func add(client int, v string, call, ret int, out Outcome) Op {
	return Op{Client: client, Kind: Add, Value: v, Call: at(call), Return: at(ret), Outcome: out, Node: "n1"}
}

func has(client int, v string, call, ret int, present bool) Op {
	return Op{Client: client, Kind: Has, Value: v, Call: at(call), Return: at(ret), Outcome: OK, Present: present, Node: "n1"}
}

func TestLinearizable(t *testing.T) {
	for _, c := range []struct {
		name string
		ops  []Op
		bad  []string
	}{
		{"reads after the ack see the value", []Op{add(0, "a", 0, 10, OK), has(1, "a", 20, 30, true)}, nil},
		{"a read overlapping the add may miss it", []Op{add(0, "a", 0, 10, OK), has(1, "a", 5, 15, false)}, nil},
		{"a stale read after the ack", []Op{add(0, "a", 0, 10, OK), has(1, "a", 20, 30, false)}, []string{"a"}},
		{"a read sees a value before it was added", []Op{has(1, "b", 0, 5, true), add(0, "b", 10, 20, OK)}, []string{"b"}},
		{"a value seen, then gone", []Op{add(0, "c", 0, 10, Unknown), has(1, "c", 20, 30, true), has(1, "c", 40, 50, false)}, []string{"c"}},
		{"an add that timed out may land late", []Op{add(0, "d", 0, 10, Unknown), has(1, "d", 20, 30, false), has(1, "d", 40, 50, true)}, nil},
		{"a refused add took no effect", []Op{add(0, "e", 0, 10, Failed), has(1, "e", 20, 30, false)}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			bad, err := Linearizable(c.ops, nil, time.Second)
			require.NoError(t, err)
			var got []string
			for _, a := range bad {
				got = append(got, a.Value)
			}
			require.Equal(t, c.bad, got)
		})
	}
	// A lost value is reported apart, not as an anomaly.
	bad, err := Linearizable([]Op{add(0, "a", 0, 10, OK), has(1, "a", 20, 30, false)}, map[string]bool{"a": true}, time.Second)
	require.NoError(t, err)
	require.Empty(t, bad)
}

func TestLost(t *testing.T) {
	ops := []Op{add(0, "a", 0, 10, OK), add(0, "b", 20, 30, OK), add(0, "c", 40, 50, Unknown), add(0, "d", 60, 70, OK)}
	lost := Lost(ops, map[string]bool{"a": true})
	require.Len(t, lost, 2)
	require.Equal(t, "b", lost[0].Value)
	require.Equal(t, "d", lost[1].Value)
}

func TestOutOfTerm(t *testing.T) {
	terms := []Term{{Node: "n1", Epoch: 5, Start: at(0), End: at(100)}, {Node: "n2", Epoch: 6, Start: at(100)}}
	in := add(0, "a", 50, 60, OK)
	straddles := add(0, "b", 90, 110, OK)
	late := add(0, "c", 150, 160, OK) // n1 answered after n2's term began
	n2 := add(0, "d", 150, 160, OK)
	n2.Node = "n2"
	out := OutOfTerm([]Op{in, straddles, late, n2}, terms)
	require.Len(t, out, 1)
	require.Equal(t, "c", out[0].Value)
}

func TestLostAges(t *testing.T) {
	terms := []Term{{Node: "n1", Epoch: 5, Start: at(0), End: at(5000)}, {Node: "n2", Epoch: 6, Start: at(5000)}}
	var ops []Op
	for ms := 0; ms < 4000; ms += 100 {
		ops = append(ops, add(0, fmt.Sprint("a", ms), ms, ms+10, OK))
	}
	// Lost: the last second of n1's acknowledgements, and one from long before.
	lost := []Op{ops[35], ops[39], ops[5]}
	ages, beyond := LostAges(ops, lost, terms, time.Second)
	require.Equal(t, []time.Duration{400 * time.Millisecond, 0, 3400 * time.Millisecond}, ages)
	require.Equal(t, []Op{ops[5]}, beyond)
}
