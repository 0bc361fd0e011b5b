package elector

import (
	"strings"
	"testing"
	"time"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

func TestLagEligible(t *testing.T) {
	ok := schema.ApplyStatus{State: schema.ApplyFollowing, StreamSeq: 10, Complete: true}
	with := func(f func(*schema.ApplyStatus)) schema.ApplyStatus {
		st := ok
		f(&st)
		return st
	}
	tests := []struct {
		name    string
		st      schema.ApplyStatus
		wantErr string
		delay   time.Duration
	}{
		{"caught up", ok, "", 0},
		{"empty stream, empty shadow", schema.ApplyStatus{State: schema.ApplyFollowing}, "", 0},
		{"never held a whole database", with(func(s *schema.ApplyStatus) { s.Complete = false }), "never held a complete database", 0},
		{"full copy in flight", with(func(s *schema.ApplyStatus) { s.LagTXIDs, s.LagBytes = -1, -1 }), "full copy", 0},
		{"one large file in flight", with(func(s *schema.ApplyStatus) { s.LagTXIDs, s.LagBytes = 1, 500<<20 }), "bytes behind", 0},
		{"too many TXIDs", with(func(s *schema.ApplyStatus) { s.LagTXIDs = 501 }), "TXIDs behind", 0},
		{"behind retention", with(func(s *schema.ApplyStatus) {
			s.State, s.Error = schema.ApplyBehindRetention, "the next message (sequence 5) is no longer in the WAL stream"
		}), "retention", 0},
		{"failed", with(func(s *schema.ApplyStatus) { s.State, s.Error = schema.ApplyFailed, "gap" }), "replication failed", 0},
		{"ranked by lag", with(func(s *schema.ApplyStatus) { s.LagTXIDs, s.LagBytes = 10, 3<<20 }), "", 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			delay, err := lagEligible(tt.st, 500, 64<<20, time.Second)
			if tt.wantErr == "" {
				if err != nil || delay != tt.delay {
					t.Fatalf("got %v, %v; want %v, eligible", delay, err, tt.delay)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one saying %q", err, tt.wantErr)
			}
		})
	}
}
