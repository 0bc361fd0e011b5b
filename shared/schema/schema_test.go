package schema

import "testing"

func TestEpochGate(t *testing.T) {
	var g EpochGate
	steps := []struct {
		epoch uint64
		want  bool
	}{{5, true}, {5, true}, {7, true}, {6, false}, {0, false}, {8, true}}
	for i, s := range steps {
		if got := g.Admit(s.epoch); got != s.want {
			t.Fatalf("step %d: Admit(%d) = %v, want %v", i, s.epoch, got, s.want)
		}
	}
	if g.Newest() != 8 {
		t.Fatalf("Newest = %d, want 8", g.Newest())
	}
}

func TestNames(t *testing.T) {
	if got := Endpoint("prod", "n1", ServiceElector, "promote"); got != "ccm.prod.n1.elector.promote" {
		t.Errorf("Endpoint = %q", got)
	}
	if got := NodeFromKey(NodeKey("n1")); got != "n1" {
		t.Errorf("NodeFromKey = %q", got)
	}
	if got := NodeFromKey("leader"); got != "" {
		t.Errorf("NodeFromKey(leader) = %q", got)
	}
	if got := (LeaderRecord{Node: "a"}).EpochAt(9); got != 9 {
		t.Errorf("EpochAt with no epoch = %d, want the revision", got)
	}
	if got := (LeaderRecord{Node: "a", Epoch: 4}).EpochAt(9); got != 4 {
		t.Errorf("EpochAt = %d, want 4", got)
	}
}
