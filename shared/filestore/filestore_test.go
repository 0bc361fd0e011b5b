package filestore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/filestore"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

func open(t *testing.T) (*filestore.Store, jetstream.ObjectStore) {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, natstest.Server(t).ClientURL()))
	require.NoError(t, err)
	ctx := context.Background()
	st, err := filestore.Open(ctx, js, "dc", 1)
	require.NoError(t, err)
	obs, err := js.ObjectStore(ctx, filestore.BlobsBucket("dc"))
	require.NoError(t, err)
	return st, obs
}

func random(n int, seed uint64) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// TestUploadReadsBackWithObjectStoreGet: ccm writes an object's chunks and
// metadata itself (bounded in flight, metadata last); nats.go's own
// ObjectStore.Get must read back the same bytes with a valid digest, at
// sizes around the chunk size.
func TestUploadReadsBackWithObjectStoreGet(t *testing.T) {
	st, obs := open(t)
	ctx := context.Background()
	dir := t.TempDir()
	for i, n := range []int{0, 1, schema.MaxChunk - 1, schema.MaxChunk, schema.MaxChunk + 1, 5*schema.MaxChunk + 12345} {
		data := random(n, uint64(i+1))
		path := filepath.Join(dir, "f")
		require.NoError(t, os.WriteFile(path, data, 0o644))
		s, size, err := filestore.HashFile(path)
		if err != nil || s != sum(data) || size != int64(n) {
			t.Fatalf("HashFile of %d bytes: %s %d %v, want %s", n, s, size, err, sum(data))
		}
		require.NoErrorf(t, st.Upload(ctx, path, s), "upload %d bytes", n)
		r, err := obs.Get(ctx, s)
		require.NoErrorf(t, err, "ObjectStore.Get of %d bytes", n)
		got, err := io.ReadAll(r) // verifies the digest at the end
		r.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("ObjectStore.Get of %d bytes: got %d bytes (equal %v), err %v", n, len(got), bytes.Equal(got, data), err)
		}
		if ok, err := st.HasObject(ctx, s); !ok || err != nil {
			t.Fatalf("HasObject after upload of %d bytes: %v %v", n, ok, err)
		}
	}
	// A file that changes after it was hashed is refused, and leaves no
	// object that looks whole.
	path := filepath.Join(dir, "changing")
	os.WriteFile(path, random(3*schema.MaxChunk, 99), 0o644)
	s, _, _ := filestore.HashFile(path)
	os.WriteFile(path, random(3*schema.MaxChunk, 100), 0o644)
	if err := st.Upload(ctx, path, s); !errors.Is(err, filestore.ErrChanged) {
		t.Fatalf("upload of a changed file: %v, want ErrChanged", err)
	}
	if ok, _ := st.HasObject(ctx, s); ok {
		t.Fatal("a refused upload left an object that looks whole")
	}
}

// TestFetchReadsObjectStorePut: objects written by nats.go's own Put are
// fetched whole, with the entry's mode and mtime; contents that do not
// match the entry are refused and leave nothing visible.
func TestFetchReadsObjectStorePut(t *testing.T) {
	st, obs := open(t)
	ctx := context.Background()
	data := random(3*schema.MaxChunk+7, 7)
	s := sum(data)
	if _, err := obs.PutBytes(ctx, s, data); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dst := filepath.Join(dir, "sub", "file")
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	e := filestore.Entry{Path: "sub/file", Size: int64(len(data)), SHA256: s, Mode: 0o604, MtimeNs: mtime.UnixNano()}
	var progress int64
	require.NoError(t, st.Fetch(ctx, e, dst, func(n int64) { progress += n }))
	got, err := os.ReadFile(dst)
	fi, _ := os.Stat(dst)
	if err != nil || !bytes.Equal(got, data) || fi.Mode().Perm() != 0o604 || !fi.ModTime().Equal(mtime) || progress != int64(len(data)) {
		t.Fatalf("fetched %d bytes (equal %v, %v), mode %v, mtime %v, progress %d; want %d bytes, 0604, %v", len(got), bytes.Equal(got, data), err, fi.Mode().Perm(), fi.ModTime(), progress, len(data), mtime)
	}

	bad := e
	bad.Path, bad.Size = "sub/bad", e.Size-1
	if err := st.Fetch(ctx, bad, filepath.Join(dir, "sub", "bad"), nil); !errors.Is(err, filestore.ErrCorrupt) {
		t.Fatalf("fetch with the wrong size: %v, want ErrCorrupt", err)
	}
	missing := e
	missing.Path, missing.SHA256 = "sub/missing", sum([]byte("never stored"))
	if err := st.Fetch(ctx, missing, filepath.Join(dir, "sub", "missing"), nil); !errors.Is(err, filestore.ErrMissing) {
		t.Fatalf("fetch of a missing object: %v, want ErrMissing", err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "sub"))
	var names []string
	for _, d := range entries {
		names = append(names, d.Name())
	}
	if strings.Join(names, ",") != "file" {
		t.Fatalf("after refused fetches the directory holds %v, want only file", names)
	}
}
