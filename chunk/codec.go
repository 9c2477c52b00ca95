package chunk

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// ErrCorrupt reports a chunk whose bytes do not hash to the ID it was fetched
// under. Callers treat it as "this source is bad", never as "retry".
var ErrCorrupt = errors.New("chunk: content does not match its ID")

// Codec turns raw chunks into stored objects and back. A stored object is one
// zstd frame with its content size in the frame header (so a reader can
// refuse an oversized chunk before decoding it) and a content checksum. Safe
// for concurrent use.
type Codec struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

// NewCodec returns a Codec using the zstd default level, which measured about
// as fast as the fastest level per chunk for a better ratio.
func NewCodec() (*Codec, error) { return NewCodecLevel(zstd.SpeedDefault) }

// NewCodecLevel returns a Codec that encodes at level (zstd.SpeedDefault when
// zero). Objects of every level decode alike; a store that keeps few full
// objects (delta-primary: its keyframes) may spend more time on each.
func NewCodecLevel(level zstd.EncoderLevel) (*Codec, error) {
	if level == 0 {
		level = zstd.SpeedDefault
	}
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(level),
		// Single-segment frames always carry the content size, even below
		// 256 bytes where zstd otherwise leaves it out.
		zstd.WithSingleSegment(true),
		zstd.WithZeroFrames(true),
	)
	if err != nil {
		return nil, fmt.Errorf("creating zstd encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(MaxChunkSize+decodeSlack),
		zstd.WithDecoderMaxWindow(MaxChunkSize),
		zstd.WithDecodeAllCapLimit(true),
	)
	if err != nil {
		enc.Close()
		return nil, fmt.Errorf("creating zstd decoder: %w", err)
	}
	return &Codec{enc: enc, dec: dec}, nil
}

// Close releases the encoder and decoder. The Codec must not be used after.
func (c *Codec) Close() {
	c.enc.Close()
	c.dec.Close()
}

// Encode appends the stored object for raw to dst.
func (c *Codec) Encode(dst, raw []byte) []byte {
	return c.enc.EncodeAll(raw, dst)
}

// EncodeStored appends to dst a stored object for raw that is not compressed: one
// zstd frame of raw blocks, with its content size and no checksum (the chunk ID is the
// check), which every zstd decoder reads. Making it costs a copy, where compressing a
// chunk runs at about 120 MB/s; reading it back costs a copy too. The daemon keeps the
// chunks it rebuilds from deltas this way: during an upgrade, compressing them for its
// cache was a quarter of its CPU, and the NAR waits on that CPU.
func EncodeStored(dst, raw []byte) []byte {
	const (
		magic        = 0xFD2FB528
		singleFCS4   = 2<<6 | 1<<5 // 4-byte content size, single segment: no window byte
		maxBlockSize = 128 << 10   // zstd's Block_Maximum_Size
		blockRaw     = 0 << 1
	)
	dst = binary.LittleEndian.AppendUint32(dst, magic)
	dst = append(dst, singleFCS4)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(raw)))
	for {
		n := min(len(raw), maxBlockSize)
		header := uint32(n)<<3 | blockRaw
		if n == len(raw) {
			header |= 1 // last block
		}
		dst = append(dst, byte(header), byte(header>>8), byte(header>>16))
		dst = append(dst, raw[:n]...)
		if raw = raw[n:]; len(raw) == 0 {
			return dst
		}
	}
}

// Decode appends the bytes stored in obj to dst. It refuses a frame that
// declares, or decodes to, more than maxSize bytes (never more than
// MaxChunkSize), a frame without a declared content size, and garbage or
// truncated input. It allocates only what the frame declares, and only once
// the declaration is within bounds. On error it returns nil.
func (c *Codec) Decode(dst, obj []byte, maxSize int) ([]byte, error) {
	maxSize = min(maxSize, MaxChunkSize)
	h, err := frameHeader(obj, maxSize, "a chunk")
	if err != nil {
		return nil, fmt.Errorf("decoding chunk object: %w", err)
	}
	size := int(h.FrameContentSize)
	n := len(dst)
	dst = reserve(dst, size+decodeSlack)
	// Capping the capacity at the declared size (and the slack) makes the decoder
	// fail rather than write past it, whatever the frames that follow claim; the
	// length check below refuses a frame that used the slack.
	out, err := c.dec.DecodeAll(obj, dst[:n:n+size+decodeSlack])
	if err != nil {
		return nil, fmt.Errorf("decoding chunk object: %w", err)
	}
	if len(out)-n != size {
		return nil, fmt.Errorf("decoding chunk object: decoded %d bytes, frame declares %d", len(out)-n, size)
	}
	return out, nil
}

// Open decodes obj like Decode and checks that the result hashes to id, so
// no caller can use a chunk's bytes without that check. A mismatch wraps
// ErrCorrupt.
func (c *Codec) Open(dst []byte, id ID, obj []byte, maxSize int) ([]byte, error) {
	n := len(dst)
	out, err := c.Decode(dst, obj, maxSize)
	if err != nil {
		return nil, fmt.Errorf("opening chunk %s: %w", id, err)
	}
	if got := Sum(out[n:]); got != id {
		return nil, fmt.Errorf("opening chunk %s: content hashes to %s: %w", id, got, ErrCorrupt)
	}
	return out, nil
}

// frameHeader reads the header of a stored object's zstd frame and refuses, before
// anything is allocated for it, a skippable frame (in place of what), a frame that
// does not declare its content size, and one that declares more than maxSize bytes.
func frameHeader(obj []byte, maxSize int, what string) (zstd.Header, error) {
	var h zstd.Header
	if err := h.Decode(obj); err != nil {
		return h, fmt.Errorf("reading zstd frame header: %w", err)
	}
	switch {
	case h.Skippable:
		return h, fmt.Errorf("skippable frame instead of %s", what)
	case !h.HasFCS:
		return h, errors.New("zstd frame does not declare its content size")
	case maxSize < 0 || h.FrameContentSize > uint64(maxSize):
		return h, fmt.Errorf("declared size %d exceeds limit %d", h.FrameContentSize, maxSize)
	}
	return h, nil
}

// decodeSlack is room past a frame's declared size in the buffer it decodes into.
// With at least 32 bytes spare (zstd's compressedBlockOverAlloc), klauspost's decoder
// copies literals and matches in whole blocks; a buffer cut exactly to the size makes it
// copy byte by byte. Real NAR chunks (a Go toolchain) decode at 700 MB/s instead of
// 415; BenchmarkDecodeSlack measures the same on code-like input.
const decodeSlack = 32

// reserve returns dst with room for size more bytes.
func reserve(dst []byte, size int) []byte {
	if n := len(dst); cap(dst)-n < size {
		grown := make([]byte, n, n+size)
		copy(grown, dst)
		return grown
	}
	return dst
}
