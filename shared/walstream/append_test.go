package walstream

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"github.com/superfly/ltx"

	"github.com/convex-cluster-manager/ccm/shared/natstest"
)

const testCluster = "t"

// stream starts a NATS server with the WAL stream (one replica) and returns
// a JetStream client of it.
func stream(t *testing.T) (string, jetstream.JetStream) {
	t.Helper()
	srv := natstest.Server(t)
	js, err := jetstream.New(natstest.Connect(t, srv.ClientURL()))
	require.NoError(t, err)
	if _, err := Ensure(context.Background(), js, testCluster, time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	return srv.Addr().String(), js
}

// file is an LTX file's payload as the test appends it.
type file struct {
	txid ltx.TXID
	data []byte
}

// readFiles reads the whole stream: its epoch markers and the files, each
// reassembled from its chunks, which must be in order with none repeated.
func readFiles(t *testing.T, js jetstream.JetStream) (markers int, files []file, last uint64) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, Stream(testCluster))
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	var cur *file
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		require.NoErrorf(t, err, "message %d", seq)
		meta, err := ParseMeta(m.Header)
		require.NoErrorf(t, err, "message %d", seq)
		if meta.Kind == KindMarker {
			markers++
			continue
		}
		if meta.Chunk == 0 {
			if cur != nil {
				t.Fatalf("message %d starts TXID %d before TXID %d ended", seq, meta.MinTXID, cur.txid)
			}
			cur = &file{txid: meta.MinTXID}
		} else if cur == nil || cur.txid != meta.MinTXID {
			t.Fatalf("message %d: chunk %d of TXID %d out of place", seq, meta.Chunk, meta.MinTXID)
		}
		cur.data = append(cur.data, m.Data...)
		if meta.Last {
			files = append(files, *cur)
			cur = nil
		}
	}
	return markers, files, info.State.LastSeq
}

func appendFile(ctx context.Context, a *Appender, f file) error {
	m := Meta{MinTXID: f.txid, MaxTXID: f.txid, Captured: time.Now()}
	post := func() (ltx.Checksum, error) { return ltx.ChecksumFlag | ltx.Checksum(f.txid), nil }
	return a.AppendLTX(ctx, m, bytes.NewReader(f.data), int64(len(f.data)), post)
}

// TestRetryAfterLostAckIsAdopted: the first attempt of an append was stored
// but its acknowledgement lost. On a one-replica stream the retry is
// refused as "wrong last sequence" before de-duplication; the appender must
// find its own message in the stream and go on, not fence itself.
func TestRetryAfterLostAckIsAdopted(t *testing.T) {
	_, js := stream(t)
	ctx := context.Background()
	a, err := Open(ctx, js, testCluster, "n1", 1, "test")
	require.NoError(t, err)
	f := file{txid: 1, data: bytes.Repeat([]byte("x"), ChunkSize+100)} // two chunks
	// The first chunk's first attempt, as the appender sends it, stored
	// by the server; its acknowledgement never reached the appender.
	m := Meta{Kind: KindLTX, Epoch: 1, Node: "n1", MinTXID: 1, MaxTXID: 1, End: int64(len(f.data)), Chain: a.Chain(), Captured: time.Now()}
	p := &pipe{a: a}
	lost := p.next(m.Header(), f.data[:ChunkSize], "ltx.1.0")
	if _, err := js.PublishMsg(ctx, lost.msg); err != nil {
		t.Fatal(err)
	}

	require.NoErrorf(t, appendFile(ctx, a, f), "append after a lost acknowledgement")
	require.NoErrorf(t, appendFile(ctx, a, file{txid: 2, data: []byte("next")}), "the append after it")
	_, files, last := readFiles(t, js)
	if len(files) != 2 || !bytes.Equal(files[0].data, f.data) || string(files[1].data) != "next" {
		t.Fatalf("stream holds %d files, want the two appended once each", len(files))
	}
	if a.LastSeq() != last || a.Resolved() == 0 {
		t.Fatalf("appender at seq %d (stream %d), %d resolved", a.LastSeq(), last, a.Resolved())
	}
}

// TestForeignMessageFences: any other message in the stream after the
// appender's last one fences it, and it appends nothing after it.
func TestForeignMessageFences(t *testing.T) {
	_, js := stream(t)
	ctx := context.Background()
	a, err := Open(ctx, js, testCluster, "n1", 1, "test")
	require.NoError(t, err)
	require.NoError(t, appendFile(ctx, a, file{txid: 1, data: []byte("one")}))
	if _, err := js.Publish(ctx, Subject(testCluster), []byte("someone else")); err != nil {
		t.Fatal(err)
	}
	err = appendFile(ctx, a, file{txid: 2, data: bytes.Repeat([]byte("y"), 3*ChunkSize)})
	if !errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), "another writer") {
		t.Fatalf("append after a foreign message: %v, want fenced by another writer's message", err)
	}
	if err := appendFile(ctx, a, file{txid: 2, data: []byte("two")}); !errors.Is(err, ErrFenced) {
		t.Fatalf("a fenced appender appended again: %v", err)
	}
	// Nothing of the appender's stays after the foreign message (its
	// pipelined chunks expect only the sequence before them, and may have
	// been stored there: they are retracted).
	s, _ := js.Stream(ctx, Stream(testCluster))
	info, _ := s.Info(ctx)
	for seq := a.LastSeq() + 2; seq <= info.State.LastSeq; seq++ {
		if m, err := s.GetMsg(ctx, seq); err == nil {
			t.Fatalf("message %d (ID %q) follows the foreign message at %d: the fenced appender's write stayed", seq, m.Header.Get(jetstream.MsgIDHeader), a.LastSeq()+1)
		}
	}
}

// TestAppendSurvivesConnectionFaults appends files of random sizes while
// the appender's connection is randomly blackholed (messages and acks
// held back, then delivered late) or reset (what was in transit lost).
// Every file must be in the stream exactly once, in order, whole.
func TestAppendSurvivesConnectionFaults(t *testing.T) {
	defer func(d time.Duration) { ackWait = d }(ackWait)
	ackWait = 300 * time.Millisecond * slow
	addr, js := stream(t)
	proxy := natstest.NewProxy(t, addr)
	nc, err := nats.Connect(proxy.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	require.NoError(t, err)
	defer nc.Close()
	pjs, err := jetstream.New(nc)
	require.NoError(t, err)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("seed %d", seed)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute*slow)
	defer cancel()
	a, err := Open(ctx, pjs, testCluster, "n1", 1, "test")
	require.NoError(t, err)
	faults, stop := 0, make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		frng := rand.New(rand.NewPCG(seed, 2))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(100+frng.IntN(400)) * time.Millisecond * slow):
			}
			faults++
			if frng.IntN(2) == 0 {
				proxy.Drop()
				continue
			}
			proxy.Cut()
			time.Sleep(time.Duration(50+frng.IntN(600)) * time.Millisecond)
			if frng.IntN(3) == 0 {
				proxy.Drop()
			}
			proxy.Heal()
		}
	}()
	var want []file
	// Append until enough appends met a fault (and at least 24 files).
	for i := 1; i <= 24 || a.Resolved() < 5; i++ {
		f := file{txid: ltx.TXID(i), data: make([]byte, 1+rng.IntN(3*ChunkSize))}
		for j := range f.data {
			f.data[j] = byte(rng.Uint32())
		}
		if err := appendFile(ctx, a, f); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("append %d after %d faults: %v", i, faults, err)
		}
		want = append(want, f)
	}
	close(stop)
	wg.Wait()

	markers, files, last := readFiles(t, js)
	if markers != 1 || len(files) != len(want) {
		t.Fatalf("stream holds %d markers and %d files, want 1 and %d", markers, len(files), len(want))
	}
	for i := range want {
		if files[i].txid != want[i].txid || !bytes.Equal(files[i].data, want[i].data) {
			t.Fatalf("file %d in the stream is not the one appended", i)
		}
	}
	if a.LastSeq() != last {
		t.Fatalf("appender at seq %d, stream at %d", a.LastSeq(), last)
	}
	t.Logf("%d files, %d faults, %d unknown outcomes resolved", len(want), faults, a.Resolved())
}
