package filestore

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
)

// ErrCorrupt means downloaded contents do not match their entry.
var ErrCorrupt = errors.New("storage object corrupt")

// ErrMissing means the Object Store has no object for an entry: not yet,
// when the NATS server answering is a replica behind the leader's (mirrors
// retry), or never, if its upload was lost.
var ErrMissing = errors.New("storage object not in the Object Store (yet)")

// ErrChanged means a file changed while it was uploaded; capture it again.
var ErrChanged = errors.New("file changed while uploading")

// TempPrefix starts the name of a file being downloaded; a mirror removes
// leftovers of an interrupted transfer and never serves them.
const TempPrefix = ".ccm-tmp-"

// HashFile returns the hex SHA-256 and size of the file at path, streaming.
func HashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// HasObject reports whether the contents with checksum sum are stored.
func (s *Store) HasObject(ctx context.Context, sum string) (bool, error) {
	info, err := s.obs.GetInfo(ctx, sum)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up storage object %s: %w", sum, err)
	}
	return !info.Deleted, nil
}

// uploadWindow is how many chunks an upload has in flight: enough to keep
// the stream busy, few enough that the server never refuses them (it
// answers a 1 GiB burst of async publishes with "too many requests").
const uploadWindow = 8

// ackWait bounds the wait for one chunk's acknowledgement.
const ackWait = 30 * time.Second

// Upload streams the file at path into the object named sum, its hex
// SHA-256, in chunks with a bounded number in flight. The object's
// metadata is written only once every chunk is stored and what was read
// hashes to sum, so a failed or raced upload never leaves an object that
// looks whole (the Object Store's own Put writes the metadata before its
// chunks are acknowledged). A file that changed since it was hashed gives
// ErrChanged. Call it only when HasObject says the object is not stored:
// contents never change under a name, so there is nothing to replace.
func (s *Store) Upload(ctx context.Context, path, sum string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	id := nuid.Next()
	chunkSubj := "$O." + s.blobs + ".C." + id
	st, err := s.js.Stream(ctx, "OBJ_"+s.blobs)
	if err != nil {
		return fmt.Errorf("upload %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok { // leave nothing behind but whole objects
			st.Purge(context.WithoutCancel(ctx), jetstream.WithPurgeSubject(chunkSubj))
		}
	}()
	h := sha256.New()
	buf := make([]byte, chunkSize)
	var inflight []jetstream.PubAckFuture
	wait := func(f jetstream.PubAckFuture) error {
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return err
		case <-time.After(ackWait):
			return fmt.Errorf("no acknowledgement for a chunk within %s", ackWait)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var size uint64
	var chunks uint32
	for {
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			h.Write(buf[:n])
			m := nats.NewMsg(chunkSubj)
			m.Data = append([]byte(nil), buf[:n]...)
			fut, err := s.js.PublishMsgAsync(m)
			if err != nil {
				return fmt.Errorf("upload %s: %w", path, err)
			}
			inflight = append(inflight, fut)
			if len(inflight) >= uploadWindow {
				if err := wait(inflight[0]); err != nil {
					return fmt.Errorf("upload %s: %w", path, err)
				}
				inflight = inflight[1:]
			}
			size += uint64(n)
			chunks++
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("upload %s: %w", path, rerr)
		}
	}
	for _, fut := range inflight {
		if err := wait(fut); err != nil {
			return fmt.Errorf("upload %s: %w", path, err)
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("%s: %w", path, ErrChanged)
	}
	info := jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: sum, Opts: &jetstream.ObjectMetaOptions{ChunkSize: chunkSize}},
		Bucket:     s.blobs, NUID: id, Size: size, ModTime: time.Now().UTC(), Chunks: chunks,
		Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(h.Sum(nil)),
	}
	meta := nats.NewMsg("$O." + s.blobs + ".M." + base64.URLEncoding.EncodeToString([]byte(sum)))
	meta.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	meta.Data, _ = json.Marshal(info)
	if _, err := s.js.PublishMsg(ctx, meta); err != nil {
		// The metadata may be stored even so (its acknowledgement was
		// lost, the request timed out after the server took it): purging
		// the chunks then would leave an object that names chunks it no
		// longer has, and HasObject says it is stored, so it is never
		// uploaded again (seen: a leader's NATS server stopped mid-upload;
		// a passive failed to mirror the file for good). The chunks stay;
		// if the metadata is not there, the next capture uploads the file
		// again under a new name and these chunks are left unreferenced.
		ok = true
		return fmt.Errorf("upload %s: store object metadata (its chunks are kept, as it may be stored): %w", path, err)
	}
	ok = true
	return nil
}

// Fetch writes the contents of e from the Object Store to dst (see
// writeVerified). progress, if set, is told the size of each block written.
func (s *Store) Fetch(ctx context.Context, e Entry, dst string, progress func(int64)) error {
	obj, err := s.openObject(ctx, e.SHA256)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("%s: object %s: %w", e.Path, e.SHA256, ErrMissing)
	}
	if err != nil {
		return fmt.Errorf("%s: get object %s: %w", e.Path, e.SHA256, err)
	}
	defer obj.Close()
	return writeVerified(e, dst, obj, progress)
}

// openObject reads an object's chunks one at a time by direct gets (next
// message on the object's chunk subject), so that memory stays flat
// whatever the size and no consumer is created per object (the Object
// Store's own Get buffers as many chunks as the server pushes).
func (s *Store) openObject(ctx context.Context, name string) (io.ReadCloser, error) {
	info, err := s.obs.GetInfo(ctx, name)
	if err != nil {
		return nil, err
	}
	if info.Chunks == 0 {
		return io.NopCloser(strings.NewReader("")), nil
	}
	st, err := s.js.Stream(ctx, "OBJ_"+info.Bucket)
	if err != nil {
		return nil, err
	}
	return &chunkReader{ctx: ctx, st: st, subject: "$O." + info.Bucket + ".C." + info.NUID, left: info.Chunks, next: 1}, nil
}

// chunkReader reads an object's chunks in order.
type chunkReader struct {
	ctx     context.Context
	st      jetstream.Stream
	subject string
	left    uint32
	next    uint64 // stream sequence to look from
	buf     []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.left == 0 {
			return 0, io.EOF
		}
		m, err := r.st.GetMsg(r.ctx, r.next, jetstream.WithGetMsgSubject(r.subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, fmt.Errorf("object chunks end early (%d missing): %w", r.left, ErrCorrupt)
		}
		if err != nil {
			return 0, fmt.Errorf("read object chunk: %w", err)
		}
		r.buf, r.next = m.Data, m.Sequence+1
		r.left--
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *chunkReader) Close() error { return nil }

// CopyLocal writes the file at src, which should hold e's contents, to dst
// (see writeVerified): a node that has the file already need not download it.
func CopyLocal(src string, e Entry, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	return writeVerified(e, dst, f, nil)
}

// writeVerified writes r to dst, never visibly partial: into a temporary
// file beside it (named with TempPrefix), checked against e's size and
// SHA-256, synced, given e's mode and mtime, then renamed over dst and the
// directory synced.
func writeVerified(e Entry, dst string, r io.Reader, progress func(int64)) error {
	if err := os.MkdirAll(filepath.Dir(dst), fsutil.DataDir); err != nil {
		return err
	}
	mtime := time.Unix(0, e.MtimeNs)
	o := fsutil.ReplaceOptions{Perm: fs.FileMode(e.Mode) & fs.ModePerm, TempPrefix: TempPrefix,
		Finish: func(tmp string) error { return os.Chtimes(tmp, mtime, mtime) }}
	return fsutil.Replace(dst, o, func(f *os.File) error {
		h := sha256.New()
		var w io.Writer = io.MultiWriter(f, h)
		if progress != nil {
			w = io.MultiWriter(w, progressWriter(progress))
		}
		n, err := io.CopyBuffer(w, r, make([]byte, 256<<10))
		if err != nil {
			return fmt.Errorf("%s: copy: %w", e.Path, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); n != e.Size || got != e.SHA256 {
			return fmt.Errorf("%s: got %d bytes with SHA-256 %s, want %d bytes with %s: %w", e.Path, n, got, e.Size, e.SHA256, ErrCorrupt)
		}
		return nil
	})
}

type progressWriter func(int64)

// Write reports a running total; it relies on being called sequentially.
func (p progressWriter) Write(b []byte) (int, error) {
	p(int64(len(b)))
	return len(b), nil
}

// Objects lists the stored objects.
func (s *Store) Objects(ctx context.Context) ([]*jetstream.ObjectInfo, error) {
	l, err := s.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list storage objects: %w", err)
	}
	return l, nil
}

// DeleteObject removes the object named sum.
func (s *Store) DeleteObject(ctx context.Context, sum string) error {
	if err := s.obs.Delete(ctx, sum); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("delete storage object %s: %w", sum, err)
	}
	return nil
}

// Matches reports whether the file at path is the one e describes, by
// size, mtime and mode: a mirror sets them before the rename that
// publishes a file, so a match at the final path is a complete, verified copy.
func Matches(path string, e Entry) bool {
	st, err := os.Lstat(path)
	return err == nil && st.Mode().IsRegular() && st.Size() == e.Size && st.ModTime().UnixNano() == e.MtimeNs &&
		uint32(st.Mode().Perm()) == e.Mode
}
