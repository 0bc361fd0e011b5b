// Package filestore keeps the backend's storage/ tree (pushed modules,
// uploaded files, search segments, exports) in NATS: each file's contents
// in an Object Store named by its SHA-256, so that a file written once is
// uploaded once, and a manifest in a KV bucket, one key per path plus a
// summary key, each entry with the WAL stream position it belongs with.
package filestore

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// FilesBucket is the KV bucket of a cluster's storage manifest.
func FilesBucket(cluster string) string { return "ccm_files_" + cluster }

// BlobsBucket is the Object Store bucket of a cluster's storage contents.
func BlobsBucket(cluster string) string { return "ccm_blobs_" + cluster }

// ManifestKey holds the Manifest summary in the files bucket.
const ManifestKey = "manifest"

// filePrefix prefixes the key of each file's Entry.
const filePrefix = "f."

// chunkSize is the object chunk size.
const chunkSize = schema.MaxChunk

// Entry is one file of the storage tree.
type Entry struct {
	Path    string    `json:"path"` // slash-separated, relative to storage/
	Size    int64     `json:"size"`
	SHA256  string    `json:"sha256"` // hex; also the object's name
	Mode    uint32    `json:"mode"`   // permission bits
	MtimeNs int64     `json:"mtimeNs"`
	Epoch   uint64    `json:"epoch"`
	DBSeq   uint64    `json:"dbSeq"` // WAL stream sequence when the file was captured
	Node    string    `json:"node"`
	At      time.Time `json:"at"`
}

// Manifest summarises the tree as the leader last published it.
type Manifest struct {
	Epoch   uint64    `json:"epoch"`
	Node    string    `json:"node"`
	Files   int       `json:"files"`
	Bytes   int64     `json:"bytes"`
	DBSeq   uint64    `json:"dbSeq"`
	Updated time.Time `json:"updated"`
}

// ErrNone means the cluster has no storage buckets yet.
var ErrNone = errors.New("no storage replicated yet")

// Store is a cluster's storage buckets.
type Store struct {
	kv       jetstream.KeyValue
	obs      jetstream.ObjectStore
	js       jetstream.JetStream
	kvStream string
	blobs    string // Object Store bucket name
}

// Open creates or opens the cluster's storage buckets.
func Open(ctx context.Context, js jetstream.JetStream, cluster string, replicas int) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      FilesBucket(cluster),
		Description: "ccm storage manifest of cluster " + cluster,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		History:     1,
	})
	if err != nil {
		return nil, fmt.Errorf("open storage manifest bucket %s: %w", FilesBucket(cluster), err)
	}
	obs, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      BlobsBucket(cluster),
		Description: "ccm storage contents of cluster " + cluster,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("open storage contents bucket %s: %w", BlobsBucket(cluster), err)
	}
	return &Store{kv: kv, obs: obs, js: js, kvStream: "KV_" + FilesBucket(cluster), blobs: BlobsBucket(cluster)}, nil
}

// Lookup opens the cluster's storage buckets without creating them.
func Lookup(ctx context.Context, js jetstream.JetStream, cluster string) (*Store, error) {
	kv, err := js.KeyValue(ctx, FilesBucket(cluster))
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, ErrNone
	}
	if err != nil {
		return nil, fmt.Errorf("open storage manifest bucket %s: %w", FilesBucket(cluster), err)
	}
	obs, err := js.ObjectStore(ctx, BlobsBucket(cluster))
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, ErrNone
	}
	if err != nil {
		return nil, fmt.Errorf("open storage contents bucket %s: %w", BlobsBucket(cluster), err)
	}
	return &Store{kv: kv, obs: obs, js: js, kvStream: "KV_" + FilesBucket(cluster), blobs: BlobsBucket(cluster)}, nil
}

// Key is the KV key of the entry of a relative path.
func Key(p string) string { return filePrefix + base64.RawURLEncoding.EncodeToString([]byte(p)) }

// PathOf returns the path of an entry key; ok is false for other keys.
func PathOf(key string) (string, bool) {
	if !strings.HasPrefix(key, filePrefix) {
		return "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(key[len(filePrefix):])
	if err != nil {
		return "", false
	}
	return string(b), true
}

// CheckPath rejects a path that would leave the storage directory or is
// not in canonical form: an entry with it is never written to disk.
func CheckPath(p string) error {
	if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../") || strings.ContainsRune(p, 0) {
		return fmt.Errorf("storage path %q is not a clean relative path", p)
	}
	return nil
}

// ParseEntry decodes and checks an entry value.
func ParseEntry(b []byte) (Entry, error) {
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("storage entry %q: %w", b, err)
	}
	if err := CheckPath(e.Path); err != nil {
		return e, err
	}
	if len(e.SHA256) != 64 || strings.Trim(e.SHA256, "0123456789abcdef") != "" {
		return e, fmt.Errorf("storage entry %s: checksum %q is not a hex SHA-256", e.Path, e.SHA256)
	}
	if e.Size < 0 {
		return e, fmt.Errorf("storage entry %s: size %d", e.Path, e.Size)
	}
	return e, nil
}

// Put publishes an entry.
func (s *Store) Put(ctx context.Context, e Entry) error {
	b, _ := json.Marshal(e)
	if _, err := s.kv.Put(ctx, Key(e.Path), b); err != nil {
		return fmt.Errorf("publish storage entry %s: %w", e.Path, err)
	}
	return nil
}

// Delete removes the entry of path.
func (s *Store) Delete(ctx context.Context, p string) error {
	if err := s.kv.Delete(ctx, Key(p)); err != nil {
		return fmt.Errorf("delete storage entry %s: %w", p, err)
	}
	return nil
}

// PutManifest publishes the summary.
func (s *Store) PutManifest(ctx context.Context, m Manifest) error {
	b, _ := json.Marshal(m)
	if _, err := s.kv.Put(ctx, ManifestKey, b); err != nil {
		return fmt.Errorf("publish storage manifest: %w", err)
	}
	return nil
}

// LastRevision is the revision of the newest change to the manifest: a
// mirror that has applied it has every file the leader published.
func (s *Store) LastRevision(ctx context.Context) (uint64, error) {
	st, err := s.js.Stream(ctx, s.kvStream)
	if err != nil {
		return 0, fmt.Errorf("storage manifest stream: %w", err)
	}
	return st.CachedInfo().State.LastSeq, nil
}

// Watch follows every key: current values first, then a nil entry, then
// changes (deletes included).
func (s *Store) Watch(ctx context.Context) (jetstream.KeyWatcher, error) {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch the storage manifest: %w", err)
	}
	return w, nil
}

// Entries returns the current entries by path, and the revision they are
// current at. Invalid entries are returned in bad, not dropped silently.
func (s *Store) Entries(ctx context.Context) (entries map[string]Entry, rev uint64, bad []error, err error) {
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, 0, nil, fmt.Errorf("read the storage manifest: %w", err)
	}
	defer w.Stop()
	entries = map[string]Entry{}
	for {
		select {
		case <-ctx.Done():
			return nil, 0, nil, ctx.Err()
		case kve := <-w.Updates():
			if kve == nil {
				return entries, rev, bad, nil
			}
			rev = max(rev, kve.Revision())
			if _, ok := PathOf(kve.Key()); !ok {
				continue
			}
			e, err := ParseEntry(kve.Value())
			if err != nil {
				bad = append(bad, err)
				continue
			}
			entries[e.Path] = e
		}
	}
}
