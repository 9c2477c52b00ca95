package chunk

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
)

// Delta objects carry a chunk as a zstd frame compressed against a raw
// dictionary: the concatenated bytes of a few "base" chunks of an older
// version of the same package. Small changes between releases (shifted
// addresses, bumped version strings) touch most chunks of a binary, so the
// new chunks are almost all new; against their old counterparts they are a
// few percent of their size. See docs/format.md, "Delta object".
const (
	// MaxDeltaBases bounds the base chunks one delta may use, and so the
	// dictionary a client must assemble and a peer must hash.
	MaxDeltaBases = 8
	// MaxDictSize bounds the concatenated base chunks of one delta.
	MaxDictSize = 4 << 20
	// MaxDeltaChunk bounds the chunk a delta may rebuild. Together with
	// MaxDictSize it fits the one zstd window every delta frame uses.
	MaxDeltaChunk = 4 << 20
	// deltaWindow lets every byte of a chunk reference every byte of its
	// dictionary. It is fixed because a zstd encoder cannot change its
	// window when re-armed with the next delta's dictionary.
	deltaWindow = MaxDictSize + MaxDeltaChunk
)

// deltaIDDomain separates delta names from every other BLAKE3 use in shoal.
const deltaIDDomain = "shoal delta v1\x00"

// DeltaID names the delta object that rebuilds target from bases, in that
// order. It is a name, not a checksum of the object: what proves a delta
// right is that its decoded bytes hash to target. Naming by (target, bases)
// lets a store hold one delta per base choice and a client ask for exactly
// the one its local chunks can decode.
func DeltaID(target ID, bases []ID) ID {
	h := blake3.New()
	h.Write([]byte(deltaIDDomain))
	h.Write(target[:])
	for _, b := range bases {
		h.Write(b[:])
	}
	var id ID
	h.Sum(id[:0])
	return id
}

// DeltaCodec encodes and decodes delta objects. zstd encoders and decoders
// cost far more to make than a 64 KiB chunk costs to compress, so the codec
// keeps a bounded set of each and re-arms them with each delta's dictionary.
// Safe for concurrent use.
type DeltaCodec struct {
	level zstd.EncoderLevel
	encs  chan *zstd.Encoder
	decs  chan *zstd.Decoder
}

// NewDeltaCodec returns a codec that compresses at level (zstd.SpeedDefault
// when zero) and keeps up to keep encoders and decoders between calls.
func NewDeltaCodec(level zstd.EncoderLevel, keep int) *DeltaCodec {
	if level == 0 {
		level = zstd.SpeedDefault
	}
	keep = max(keep, 1)
	return &DeltaCodec{
		level: level,
		encs:  make(chan *zstd.Encoder, keep),
		decs:  make(chan *zstd.Decoder, keep),
	}
}

// Close releases the kept encoders and decoders. Calls after Close still
// work but keep nothing.
func (c *DeltaCodec) Close() {
	for {
		select {
		case e := <-c.encs:
			e.Close()
		case d := <-c.decs:
			d.Close()
		default:
			return
		}
	}
}

// EncodeDelta appends to dst the delta object that rebuilds raw from dict,
// the concatenation of the base chunks in the order the manifest lists them.
func (c *DeltaCodec) EncodeDelta(dst, raw, dict []byte) ([]byte, error) {
	if len(raw) > MaxDeltaChunk {
		return nil, fmt.Errorf("encoding delta: chunk of %d bytes exceeds %d", len(raw), MaxDeltaChunk)
	}
	if len(dict) == 0 || len(dict) > MaxDictSize {
		return nil, fmt.Errorf("encoding delta: dictionary of %d bytes outside 1..%d", len(dict), MaxDictSize)
	}
	opts := []zstd.EOption{zstd.WithEncoderDictRaw(0, dict)}
	var enc *zstd.Encoder
	select {
	case enc = <-c.encs:
		if err := enc.ResetWithOptions(nil, opts...); err != nil {
			enc.Close()
			return nil, fmt.Errorf("encoding delta: %w", err)
		}
	default:
		var err error
		enc, err = zstd.NewWriter(nil, append(opts,
			zstd.WithEncoderLevel(c.level),
			zstd.WithWindowSize(deltaWindow),
			zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(true),
			zstd.WithZeroFrames(true),
		)...)
		if err != nil {
			return nil, fmt.Errorf("encoding delta: creating zstd encoder: %w", err)
		}
	}
	out := enc.EncodeAll(raw, dst)
	select {
	case c.encs <- enc:
	default:
		enc.Close()
	}
	return out, nil
}

// OpenDelta decodes obj against dict, appends the result to dst and checks
// that it hashes to id. Like Codec.Decode it refuses a frame that declares
// no content size or more than maxSize bytes before allocating for it. A
// result that does not hash to id wraps ErrCorrupt: the delta was made
// against other bases, or is a lie; either way the caller falls back to the
// full chunk.
func (c *DeltaCodec) OpenDelta(dst []byte, id ID, obj, dict []byte, maxSize int) ([]byte, error) {
	out, err := c.decodeDelta(dst, obj, dict, maxSize)
	if err != nil {
		return nil, fmt.Errorf("opening delta for chunk %s: %w", id, err)
	}
	if got := Sum(out[len(dst):]); got != id {
		return nil, fmt.Errorf("opening delta for chunk %s: content hashes to %s: %w", id, got, ErrCorrupt)
	}
	return out, nil
}

func (c *DeltaCodec) decodeDelta(dst, obj, dict []byte, maxSize int) ([]byte, error) {
	maxSize = min(maxSize, MaxDeltaChunk)
	if len(dict) == 0 || len(dict) > MaxDictSize {
		return nil, fmt.Errorf("dictionary of %d bytes outside 1..%d", len(dict), MaxDictSize)
	}
	h, err := frameHeader(obj, maxSize, "a delta")
	if err != nil {
		return nil, err
	}
	if h.DictionaryID != 0 {
		return nil, fmt.Errorf("frame names dictionary %d; deltas use raw dictionaries", h.DictionaryID)
	}
	size := int(h.FrameContentSize)
	opts := []zstd.DOption{zstd.WithDecoderDictRaw(0, dict)}
	var dec *zstd.Decoder
	select {
	case dec = <-c.decs:
		if err := dec.ResetWithOptions(nil, opts...); err != nil {
			dec.Close()
			return nil, err
		}
	default:
		var err error
		dec, err = zstd.NewReader(nil, append(opts,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(deltaWindow),
			zstd.WithDecoderMaxMemory(2*deltaWindow),
			zstd.WithDecodeAllCapLimit(true),
		)...)
		if err != nil {
			return nil, fmt.Errorf("creating zstd decoder: %w", err)
		}
	}
	defer func() {
		select {
		case c.decs <- dec:
		default:
			dec.Close()
		}
	}()
	n := len(dst)
	dst = reserve(dst, size+decodeSlack)
	out, err := dec.DecodeAll(obj, dst[:n:n+size+decodeSlack])
	if err != nil {
		return nil, err
	}
	if len(out)-n != size {
		return nil, fmt.Errorf("decoded %d bytes, frame declares %d", len(out)-n, size)
	}
	return out, nil
}
