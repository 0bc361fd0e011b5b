package elector

import (
	"testing"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

func TestNext(t *testing.T) {
	const self = "a"
	lease := 9 * time.Second
	t0 := time.Unix(1000, 0)
	starting := State{Role: schema.RoleStarting}
	passive := State{Role: schema.RolePassive, Epoch: 5, Leader: "b"}
	vacant := State{Role: schema.RolePassive, Epoch: 5}
	leader := State{Role: schema.RoleLeader, Epoch: 7, Leader: self, Deadline: t0.Add(lease)}

	tests := []struct {
		name     string
		from     State
		ev       Event
		wantRole schema.Role
		check    func(t *testing.T, s State)
	}{
		{"starting synced with leader", starting, Event{Kind: Synced, Node: "b", Epoch: 5}, schema.RolePassive,
			func(t *testing.T, s State) { eq(t, s.Leader, "b"); eq(t, s.Epoch, uint64(5)) }},
		{"starting synced vacant", starting, Event{Kind: Synced}, schema.RolePassive,
			func(t *testing.T, s State) { eq(t, s.Leader, "") }},
		{"starting wins (resume)", starting, Event{Kind: Won, Epoch: 7, At: t0}, schema.RoleLeader,
			func(t *testing.T, s State) { eq(t, s.Deadline, t0.Add(lease)); eq(t, s.Ready, false) }},
		{"starting resumes a finished promotion", starting, Event{Kind: Won, Epoch: 7, At: t0, Ready: true}, schema.RoleLeader,
			func(t *testing.T, s State) { eq(t, s.Prepared, true); eq(t, s.Ready, true) }},
		{"synced again ignored", passive, Event{Kind: Synced, Node: "c", Epoch: 9}, schema.RolePassive,
			func(t *testing.T, s State) { eq(t, s.Leader, "b") }},
		{"passive wins", vacant, Event{Kind: Won, Epoch: 8, At: t0}, schema.RoleLeader,
			func(t *testing.T, s State) {
				eq(t, s.Epoch, uint64(8))
				eq(t, s.Leader, self)
				eq(t, s.Deadline, t0.Add(lease))
			}},
		{"passive wins older epoch ignored", vacant, Event{Kind: Won, Epoch: 3, At: t0}, schema.RolePassive, nil},
		{"passive renewed ignored", passive, Event{Kind: Renewed, At: t0}, schema.RolePassive, nil},
		{"passive lost ignored", passive, Event{Kind: Lost}, schema.RolePassive, nil},
		{"passive expired ignored", passive, Event{Kind: Expired, At: t0}, schema.RolePassive, nil},
		{"passive resign ignored", passive, Event{Kind: Resigned}, schema.RolePassive, nil},
		{"passive observes newer leader", passive, Event{Kind: Observed, Node: "c", Epoch: 9}, schema.RolePassive,
			func(t *testing.T, s State) { eq(t, s.Leader, "c"); eq(t, s.Epoch, uint64(9)) }},
		{"passive ignores stale leader", passive, Event{Kind: Observed, Node: "c", Epoch: 4}, schema.RolePassive,
			func(t *testing.T, s State) { eq(t, s.Leader, "b"); eq(t, s.Epoch, uint64(5)) }},
		{"passive sees vacancy", passive, Event{Kind: Vacated}, schema.RolePassive,
			func(t *testing.T, s State) { eq(t, s.Leader, ""); eq(t, s.Epoch, uint64(5)) }},
		{"leader renews", leader, Event{Kind: Renewed, At: t0.Add(3 * time.Second)}, schema.RoleLeader,
			func(t *testing.T, s State) { eq(t, s.Deadline, t0.Add(3*time.Second+lease)) }},
		{"leader renewal never shortens", leader, Event{Kind: Renewed, At: t0.Add(-time.Second)}, schema.RoleLeader,
			func(t *testing.T, s State) { eq(t, s.Deadline, t0.Add(lease)) }},
		{"leader loses CAS", leader, Event{Kind: Lost, Reason: "revision mismatch"}, schema.RolePassive,
			func(t *testing.T, s State) { eq(t, s.Reason, "revision mismatch"); eq(t, s.Deadline, time.Time{}) }},
		{"leader before deadline stays", leader, Event{Kind: Expired, At: t0.Add(lease - time.Millisecond)}, schema.RoleLeader, nil},
		{"leader at deadline fences", leader, Event{Kind: Expired, At: t0.Add(lease)}, schema.RolePassive,
			func(t *testing.T, s State) { eq(t, s.Leader, ""); eq(t, s.Epoch, uint64(7)) }},
		{"leader resigns", leader, Event{Kind: Resigned}, schema.RolePassive, nil},
		{"leader sees own epoch", leader, Event{Kind: Observed, Node: self, Epoch: 7}, schema.RoleLeader, nil},
		{"leader ignores older epoch", leader, Event{Kind: Observed, Node: "b", Epoch: 6}, schema.RoleLeader, nil},
		{"leader deposed by newer epoch", leader, Event{Kind: Observed, Node: "b", Epoch: 9}, schema.RolePassive,
			func(t *testing.T, s State) { eq(t, s.Leader, "b"); eq(t, s.Epoch, uint64(9)) }},
		{"leader same epoch other node", leader, Event{Kind: Observed, Node: "b", Epoch: 7}, schema.RolePassive, nil},
		{"leader key vacated", leader, Event{Kind: Vacated}, schema.RolePassive, nil},
		{"leader prepared", leader, Event{Kind: Prepared, Epoch: 7}, schema.RoleLeader,
			func(t *testing.T, s State) { eq(t, s.Prepared, true); eq(t, s.Ready, false) }},
		{"leader ready", leader, Event{Kind: Ready, Epoch: 7}, schema.RoleLeader,
			func(t *testing.T, s State) { eq(t, s.Prepared, true); eq(t, s.Ready, true) }},
		{"leader ready of another epoch ignored", leader, Event{Kind: Ready, Epoch: 6}, schema.RoleLeader,
			func(t *testing.T, s State) { eq(t, s.Ready, false) }},
		{"passive ready ignored", passive, Event{Kind: Ready, Epoch: 5}, schema.RolePassive,
			func(t *testing.T, s State) { eq(t, s.Ready, false) }},
		{"ready leader renews and stays ready", State{Role: schema.RoleLeader, Epoch: 7, Leader: self, Deadline: t0.Add(lease), Prepared: true, Ready: true},
			Event{Kind: Renewed, At: t0.Add(time.Second)}, schema.RoleLeader,
			func(t *testing.T, s State) { eq(t, s.Ready, true) }},
		{"ready leader fences and is not ready", State{Role: schema.RoleLeader, Epoch: 7, Leader: self, Deadline: t0.Add(lease), Prepared: true, Ready: true},
			Event{Kind: Expired, At: t0.Add(lease)}, schema.RolePassive,
			func(t *testing.T, s State) { eq(t, s.Ready, false); eq(t, s.Prepared, false) }},
		{"ready leader drains", State{Role: schema.RoleLeader, Epoch: 7, Leader: self, Deadline: t0.Add(lease), Prepared: true, Ready: true},
			Event{Kind: Draining}, schema.RoleLeader,
			func(t *testing.T, s State) { eq(t, s.Ready, false); eq(t, s.Prepared, true) }},
		{"passive draining ignored", passive, Event{Kind: Draining}, schema.RolePassive, nil},
		{"leader won again ignored", leader, Event{Kind: Won, Epoch: 9, At: t0}, schema.RoleLeader,
			func(t *testing.T, s State) { eq(t, s.Epoch, uint64(7)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Next(tt.from, tt.ev, self, lease)
			if got.Role != tt.wantRole {
				t.Fatalf("role = %s, want %s (state %+v)", got.Role, tt.wantRole, got)
			}
			if tt.check != nil {
				tt.check(t, got)
			}
		})
	}
}

func eq[T comparable](t *testing.T, got, want T) {
	t.Helper()
	if got != want {
		t.Fatalf("got %v, want %v", got, want)
	}
}
