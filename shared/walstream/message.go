package walstream

import (
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/superfly/ltx"
)

// Header names of WAL messages.
const (
	HdrKind   = "Ccm-Kind"  // KindMarker or KindLTX
	HdrEpoch  = "Ccm-Epoch" // epoch of the leader that appended it
	HdrNode   = "Ccm-Node"  // node that appended it
	HdrMinTX  = "Ccm-Min-Txid"
	HdrMaxTX  = "Ccm-Max-Txid"
	HdrPre    = "Ccm-Pre-Checksum"  // database checksum before the LTX file (hex)
	HdrPost   = "Ccm-Post-Checksum" // database checksum after it
	HdrChunk  = "Ccm-Chunk"         // index of this chunk of the LTX file, from 0
	HdrLast   = "Ccm-Last"          // "1" on the last chunk of an LTX file
	HdrCommit = "Ccm-Commit-Ms"     // leader's wall clock when the change was captured (unix ms)
)

// Kinds of WAL messages.
const (
	KindMarker = "epoch" // opens an epoch; no payload
	KindLTX    = "ltx"   // one chunk of an LTX file
)

// Meta is the parsed header of a WAL message.
type Meta struct {
	Kind    string
	Epoch   uint64
	Node    string
	MinTXID ltx.TXID
	MaxTXID ltx.TXID
	// Pre and Post are the rolling LTX checksums of the whole database
	// before and after the file, computed by walship (Litestream writes its
	// files without them).
	Pre      ltx.Checksum
	Post     ltx.Checksum
	Chunk    int
	Last     bool
	Captured time.Time
}

// Header encodes m as NATS headers.
func (m Meta) Header() nats.Header {
	h := nats.Header{}
	h.Set(HdrKind, m.Kind)
	h.Set(HdrEpoch, strconv.FormatUint(m.Epoch, 10))
	h.Set(HdrNode, m.Node)
	if m.Kind == KindLTX {
		h.Set(HdrMinTX, strconv.FormatUint(uint64(m.MinTXID), 10))
		h.Set(HdrMaxTX, strconv.FormatUint(uint64(m.MaxTXID), 10))
		h.Set(HdrPre, m.Pre.String())
		h.Set(HdrPost, m.Post.String())
		h.Set(HdrChunk, strconv.Itoa(m.Chunk))
		if m.Last {
			h.Set(HdrLast, "1")
		}
		h.Set(HdrCommit, strconv.FormatInt(m.Captured.UnixMilli(), 10))
	}
	return h
}

// ParseMeta decodes and validates the headers of a WAL message.
func ParseMeta(h nats.Header) (Meta, error) {
	var m Meta
	var err error
	m.Kind = h.Get(HdrKind)
	if m.Kind != KindMarker && m.Kind != KindLTX {
		return m, fmt.Errorf("header %s: %q is not %q or %q", HdrKind, m.Kind, KindMarker, KindLTX)
	}
	if m.Epoch, err = strconv.ParseUint(h.Get(HdrEpoch), 10, 64); err != nil || m.Epoch == 0 {
		return m, fmt.Errorf("header %s: %q is not a positive integer", HdrEpoch, h.Get(HdrEpoch))
	}
	m.Node = h.Get(HdrNode)
	if m.Kind == KindMarker {
		return m, nil
	}
	num := func(name string) (uint64, error) {
		v, err := strconv.ParseUint(h.Get(name), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("header %s: %q is not an unsigned integer", name, h.Get(name))
		}
		return v, nil
	}
	var v uint64
	if v, err = num(HdrMinTX); err != nil {
		return m, err
	}
	m.MinTXID = ltx.TXID(v)
	if v, err = num(HdrMaxTX); err != nil {
		return m, err
	}
	m.MaxTXID = ltx.TXID(v)
	if m.MinTXID == 0 || m.MaxTXID < m.MinTXID {
		return m, fmt.Errorf("TXID range %d-%d is invalid", m.MinTXID, m.MaxTXID)
	}
	if v, err = num(HdrChunk); err != nil {
		return m, err
	}
	m.Chunk = int(v)
	m.Last = h.Get(HdrLast) == "1"
	if m.Pre, err = parseChecksum(h, HdrPre); err != nil {
		return m, err
	}
	if m.Post, err = parseChecksum(h, HdrPost); err != nil {
		return m, err
	}
	if v, err = num(HdrCommit); err != nil {
		return m, err
	}
	m.Captured = time.UnixMilli(int64(v))
	return m, nil
}

func parseChecksum(h nats.Header, name string) (ltx.Checksum, error) {
	c, err := ltx.ParseChecksum(h.Get(name))
	if err != nil {
		return 0, fmt.Errorf("header %s: %q is not a checksum: %w", name, h.Get(name), err)
	}
	return c, nil
}
