// Package snapstore keeps full snapshots of a cluster's database in a NATS
// Object Store: each a page image of the database at a known WAL stream
// position, with its rolling LTX checksum, so that a new node can start
// from it and replay the stream after it.
package snapstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/superfly/ltx"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

// Bucket is the Object Store bucket of a cluster's snapshots.
func Bucket(cluster string) string { return "ccm_snap_" + cluster }

// DefaultKeep is how many snapshots are kept when a new one is stored.
const DefaultKeep = 3

// chunkSize is the object chunk size.
const chunkSize = schema.MaxChunk

// Snapshot describes one stored snapshot.
type Snapshot struct {
	Name     string
	Epoch    uint64
	TXID     ltx.TXID
	Seq      uint64 // WAL stream sequence the snapshot includes
	Checksum ltx.Checksum
	PageSize uint32
	Size     int64
	Node     string
	Captured time.Time // leader capture time of the last change included
	Created  time.Time
	// Bytes and Chain place the snapshot in the WAL chain's byte count
	// (replica.Position.Bytes and .Chain); 0 in snapshots of older versions.
	Bytes int64
	Chain uint64
}

// Store is a cluster's snapshot bucket.
type Store struct {
	obs jetstream.ObjectStore
}

// ErrNone means no snapshot is stored.
var ErrNone = errors.New("no snapshot stored")

// ErrCorrupt means a downloaded snapshot failed verification.
var ErrCorrupt = errors.New("snapshot corrupt")

// Open creates or opens the cluster's snapshot bucket.
func Open(ctx context.Context, js jetstream.JetStream, cluster string, replicas int) (*Store, error) {
	obs, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      Bucket(cluster),
		Description: "ccm database snapshots of cluster " + cluster,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("open snapshot bucket %s: %w", Bucket(cluster), err)
	}
	return &Store{obs: obs}, nil
}

// Lookup opens the cluster's snapshot bucket without creating it.
func Lookup(ctx context.Context, js jetstream.JetStream, cluster string) (*Store, error) {
	obs, err := js.ObjectStore(ctx, Bucket(cluster))
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, ErrNone
	}
	if err != nil {
		return nil, fmt.Errorf("open snapshot bucket %s: %w", Bucket(cluster), err)
	}
	return &Store{obs: obs}, nil
}

func (s Snapshot) metadata() map[string]string {
	return map[string]string{
		"epoch":    strconv.FormatUint(s.Epoch, 10),
		"txid":     strconv.FormatUint(uint64(s.TXID), 10),
		"seq":      strconv.FormatUint(s.Seq, 10),
		"checksum": s.Checksum.String(),
		"pageSize": strconv.FormatUint(uint64(s.PageSize), 10),
		"node":     s.Node,
		"captured": strconv.FormatInt(max(0, s.Captured.UnixMilli()), 10),
		"bytes":    strconv.FormatInt(s.Bytes, 10),
		"chain":    strconv.FormatUint(s.Chain, 10),
	}
}

func fromInfo(info *jetstream.ObjectInfo) (Snapshot, error) {
	md := info.Metadata
	s := Snapshot{Name: info.Name, Size: int64(info.Size), Node: md["node"], Created: info.ModTime}
	var err error
	num := func(k string) uint64 {
		if err != nil {
			return 0
		}
		var v uint64
		if v, err = strconv.ParseUint(md[k], 10, 64); err != nil {
			err = fmt.Errorf("snapshot %s: metadata %s=%q: %w", info.Name, k, md[k], err)
		}
		return v
	}
	s.Epoch, s.TXID, s.Seq, s.PageSize = num("epoch"), ltx.TXID(num("txid")), num("seq"), uint32(num("pageSize"))
	if err != nil {
		return s, err
	}
	if ms, err := strconv.ParseInt(md["captured"], 10, 64); err == nil && ms > 0 {
		s.Captured = time.UnixMilli(ms)
	}
	if md["chain"] != "" { // absent in snapshots of older versions
		s.Chain, s.Bytes = num("chain"), int64(num("bytes"))
		if err != nil {
			return s, err
		}
	}
	if s.Checksum, err = ltx.ParseChecksum(md["checksum"]); err != nil {
		return s, fmt.Errorf("snapshot %s: metadata checksum=%q: %w", info.Name, md["checksum"], err)
	}
	if s.PageSize == 0 || s.Size%int64(s.PageSize) != 0 {
		return s, fmt.Errorf("snapshot %s: size %d is not a multiple of page size %d", info.Name, s.Size, s.PageSize)
	}
	return s, nil
}

// Put stores the page image in file as a snapshot described by s (Name and
// Size are filled in), then keeps only the newest keep snapshots.
func (st *Store) Put(ctx context.Context, file string, s Snapshot, keep int) (Snapshot, error) {
	f, err := os.Open(file)
	if err != nil {
		return s, fmt.Errorf("open snapshot file: %w", err)
	}
	defer f.Close()
	s.Name = fmt.Sprintf("snap-%020d-%020d", s.Seq, s.Epoch)
	info, err := st.obs.Put(ctx, jetstream.ObjectMeta{
		Name:        s.Name,
		Description: fmt.Sprintf("epoch %d TXID %d seq %d from %s", s.Epoch, s.TXID, s.Seq, s.Node),
		Metadata:    s.metadata(),
		Opts:        &jetstream.ObjectMetaOptions{ChunkSize: chunkSize},
	}, f)
	if err != nil {
		return s, fmt.Errorf("upload snapshot %s: %w", s.Name, err)
	}
	s.Size, s.Created = int64(info.Size), info.ModTime
	if keep > 0 {
		if err := st.prune(ctx, keep); err != nil {
			return s, err
		}
	}
	return s, nil
}

// List returns the valid snapshots, oldest first. Objects with invalid
// metadata are skipped.
func (st *Store) List(ctx context.Context) ([]Snapshot, error) {
	infos, err := st.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	var out []Snapshot
	for _, info := range infos {
		if info.Deleted {
			continue
		}
		if s, err := fromInfo(info); err == nil {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b Snapshot) int {
		if c := cmp.Compare(a.Seq, b.Seq); c != 0 {
			return c
		}
		return a.Created.Compare(b.Created)
	})
	return out, nil
}

// Newest returns the snapshot at the highest stream sequence, or ErrNone.
func (st *Store) Newest(ctx context.Context) (Snapshot, error) {
	all, err := st.List(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	if len(all) == 0 {
		return Snapshot{}, ErrNone
	}
	return all[len(all)-1], nil
}

func (st *Store) prune(ctx context.Context, keep int) error {
	all, err := st.List(ctx)
	if err != nil {
		return err
	}
	for len(all) > keep {
		if err := st.obs.Delete(ctx, all[0].Name); err != nil {
			return fmt.Errorf("delete old snapshot %s: %w", all[0].Name, err)
		}
		all = all[1:]
	}
	return nil
}

// Download writes snapshot s to path (fsutil.WriteAtomic) and verifies it: the object's SHA-256 digest, its size and
// its rolling LTX checksum must all match, or the file is removed and
// ErrCorrupt returned. progress, if set, is called with the bytes written so
// far (a running total, ending with the whole).
func (st *Store) Download(ctx context.Context, s Snapshot, path string, progress func(int64)) error {
	obj, err := st.obs.Get(ctx, s.Name)
	if err != nil {
		return fmt.Errorf("download snapshot %s: %w", s.Name, err)
	}
	defer obj.Close()
	if err := os.MkdirAll(filepath.Dir(path), fsutil.DataDir); err != nil {
		return err
	}
	err = fsutil.WriteAtomic(path, fsutil.DataFile, func(f *os.File) error {
		sum, n, err := copyChecksum(f, obj, s.PageSize, progress)
		if err != nil {
			if errors.Is(err, jetstream.ErrDigestMismatch) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: %s: %w", ErrCorrupt, s.Name, err)
			}
			return fmt.Errorf("download snapshot %s: %w", s.Name, err)
		}
		if n != s.Size {
			return fmt.Errorf("%w: %s: got %d bytes, want %d", ErrCorrupt, s.Name, n, s.Size)
		}
		if sum != s.Checksum {
			return fmt.Errorf("%w: %s: database checksum %s, recorded %s", ErrCorrupt, s.Name, sum, s.Checksum)
		}
		return nil
	})
	return err
}

// Checksum computes the rolling LTX checksum of a database image read from
// r (skipping SQLite's lock page, as LTX does) and returns it with the size.
func Checksum(r io.Reader, pageSize uint32) (ltx.Checksum, int64, error) {
	return copyChecksum(io.Discard, r, pageSize, nil)
}

// copyChecksum copies r to w page by page, computing the rolling LTX checksum.
func copyChecksum(w io.Writer, r io.Reader, pageSize uint32, progress func(int64)) (ltx.Checksum, int64, error) {
	var sum ltx.Checksum
	var n int64
	buf := make([]byte, pageSize)
	lock := ltx.LockPgno(pageSize)
	h := ltx.NewHasher()
	for pgno := uint32(1); ; pgno++ {
		k, err := io.ReadFull(r, buf)
		if errors.Is(err, io.EOF) {
			if progress != nil {
				progress(n) // the whole, whatever the page count
			}
			return sum, n, nil
		}
		if err != nil {
			return sum, n, err
		}
		if _, err := w.Write(buf[:k]); err != nil {
			return sum, n, err
		}
		n += int64(k)
		if pgno != lock {
			sum = ltx.ChecksumFlag | (sum ^ ltx.ChecksumPageWithHasher(h, pgno, buf))
		}
		if progress != nil && pgno%256 == 0 {
			progress(n)
		}
	}
}
