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
	HdrPost   = "Ccm-Post-Checksum" // database checksum after it (on a file's last chunk; 0 on the others)
	HdrChunk  = "Ccm-Chunk"         // index of this chunk of the LTX file, from 0
	HdrLast   = "Ccm-Last"          // "1" on the last chunk of an LTX file
	HdrCommit = "Ccm-Commit-Ms"     // leader's wall clock when the change was captured (unix ms)
	HdrEnd    = "Ccm-End"           // chain bytes (LTX bytes since the last full copy) at the end of this chunk's file
	HdrChain  = "Ccm-Chain"         // the chain: stream sequence of the marker of its full copy

	// A marker that continues the chain names its base: the position of
	// the chain that the new writer's database is at. Without them the
	// epoch starts with a full copy.
	HdrBaseEpoch = "Ccm-Base-Epoch"
	HdrBaseTXID  = "Ccm-Base-Txid"
	HdrBaseSum   = "Ccm-Base-Checksum"
	HdrBaseSeq   = "Ccm-Base-Seq"
	HdrBaseEnd   = "Ccm-Base-End"
	HdrBaseChain = "Ccm-Base-Chain"
	HdrReason    = "Ccm-Full-Copy-Reason" // on a marker without a base: why
)

// Base is a position of the WAL chain: the database after TXID with
// Checksum, reached by the message at stream sequence Seq of epoch Epoch,
// End chain bytes from the last full copy.
type Base struct {
	Epoch    uint64       `json:"epoch"`
	TXID     ltx.TXID     `json:"txid"`
	Checksum ltx.Checksum `json:"checksum"`
	Seq      uint64       `json:"seq"`
	End      int64        `json:"end"`
	Chain    uint64       `json:"chain"`
}

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
	End      int64  // chain bytes at the end of the file (LTX chunks)
	Chain    uint64 // the chain the file belongs to (LTX chunks); End counts from its start
	// Base is the chain position a marker continues from; nil when the
	// epoch starts with a full copy, for the reason in Reason.
	Base   *Base
	Reason string
}

// Header encodes m as NATS headers.
func (m Meta) Header() nats.Header {
	h := nats.Header{}
	h.Set(HdrKind, m.Kind)
	h.Set(HdrEpoch, strconv.FormatUint(m.Epoch, 10))
	h.Set(HdrNode, m.Node)
	if m.Kind == KindMarker && m.Base != nil {
		h.Set(HdrBaseEpoch, strconv.FormatUint(m.Base.Epoch, 10))
		h.Set(HdrBaseTXID, strconv.FormatUint(uint64(m.Base.TXID), 10))
		h.Set(HdrBaseSum, m.Base.Checksum.String())
		h.Set(HdrBaseSeq, strconv.FormatUint(m.Base.Seq, 10))
		h.Set(HdrBaseEnd, strconv.FormatInt(m.Base.End, 10))
		h.Set(HdrBaseChain, strconv.FormatUint(m.Base.Chain, 10))
	} else if m.Kind == KindMarker && m.Reason != "" {
		h.Set(HdrReason, m.Reason)
	}
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
		h.Set(HdrEnd, strconv.FormatInt(m.End, 10))
		h.Set(HdrChain, strconv.FormatUint(m.Chain, 10))
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
	num := func(name string) (uint64, error) {
		v, err := strconv.ParseUint(h.Get(name), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("header %s: %q is not an unsigned integer", name, h.Get(name))
		}
		return v, nil
	}
	var v uint64
	if m.Kind == KindMarker {
		if h.Get(HdrBaseEpoch) == "" {
			m.Reason = h.Get(HdrReason)
			return m, nil
		}
		b := &Base{}
		if b.Epoch, err = num(HdrBaseEpoch); err != nil {
			return m, err
		}
		if v, err = num(HdrBaseTXID); err != nil {
			return m, err
		}
		b.TXID = ltx.TXID(v)
		if b.Checksum, err = parseChecksum(h, HdrBaseSum); err != nil {
			return m, err
		}
		if b.Seq, err = num(HdrBaseSeq); err != nil {
			return m, err
		}
		if v, err = num(HdrBaseEnd); err != nil {
			return m, err
		}
		b.End = int64(v)
		if b.Chain, err = num(HdrBaseChain); err != nil {
			return m, err
		}
		if b.TXID == 0 || b.Epoch > m.Epoch {
			return m, fmt.Errorf("marker of epoch %d: base epoch %d TXID %d is invalid", m.Epoch, b.Epoch, b.TXID)
		}
		m.Base = b
		return m, nil
	}
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
	if h.Get(HdrEnd) != "" { // absent in messages of older versions
		if v, err = num(HdrEnd); err != nil {
			return m, err
		}
		m.End = int64(v)
		if m.Chain, err = num(HdrChain); err != nil {
			return m, err
		}
	}
	return m, nil
}

func parseChecksum(h nats.Header, name string) (ltx.Checksum, error) {
	c, err := ltx.ParseChecksum(h.Get(name))
	if err != nil {
		return 0, fmt.Errorf("header %s: %q is not a checksum: %w", name, h.Get(name), err)
	}
	return c, nil
}
