package walstream

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/superfly/ltx"
)

func TestMetaRoundTrip(t *testing.T) {
	captured := time.UnixMilli(time.Now().UnixMilli())
	tests := []Meta{
		{Kind: KindMarker, Epoch: 7, Node: "n1", Reason: "a new cluster"},
		{Kind: KindMarker, Epoch: 9, Node: "n2", Base: &Base{Epoch: 7, TXID: 42, Checksum: ltx.ChecksumFlag | 0xabc, Seq: 1234, End: 99 << 20, Chain: 3}},
		{Kind: KindLTX, Epoch: 9, Node: "n2", MinTXID: 43, MaxTXID: 43, Pre: ltx.ChecksumFlag | 1, Post: ltx.ChecksumFlag | 2,
			Chunk: 3, Last: true, Captured: captured, End: 100 << 20, Chain: 3},
	}
	for _, want := range tests {
		got, err := ParseMeta(want.Header())
		require.NoErrorf(t, err, "%+v", want)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("round trip: got %+v, want %+v", got, want)
		}
	}
}

func TestParseMetaRefuses(t *testing.T) {
	base := Meta{Kind: KindMarker, Epoch: 9, Node: "n2", Base: &Base{Epoch: 7, TXID: 42, Checksum: ltx.ChecksumFlag | 1, Seq: 5, Chain: 1}}
	tests := []struct {
		name, header, value, want string
	}{
		{"base from a later epoch", HdrBaseEpoch, "10", "base epoch 10"},
		{"base TXID 0", HdrBaseTXID, "0", "is invalid"},
		{"base checksum", HdrBaseSum, "xyz", HdrBaseSum},
		{"base sequence", HdrBaseSeq, "-1", HdrBaseSeq},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := base.Header()
			h.Set(tt.header, tt.value)
			if _, err := ParseMeta(h); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one naming %q", err, tt.want)
			}
		})
	}
}
