package p2p

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/shoal-nix/shoal/chunk"
)

// shoal's own protocol IDs: reusing IPFS's would merge shoal fleets into other networks.
// Every request is one stream: the asker writes the request and closes its side, the
// server writes the answer and closes the stream.
const (
	// ProtoNarInfo: request = 32-byte store-path hash part; answer = status, then the
	// narinfo as the server received it (a frame).
	ProtoNarInfo protocol.ID = "/shoal/narinfo/1.0.0"
	// ProtoManifest: request = 32-byte NarHash; answer = status, then the manifest
	// (a frame). Served only for NARs the server verified.
	ProtoManifest protocol.ID = "/shoal/manifest/1.0.0"
	// ProtoHave: request = uvarint n, n NarHashes; answer = n bytes, 1 where the server
	// holds the whole verified NAR. The only way to learn what a peer has.
	ProtoHave protocol.ID = "/shoal/have/1.0.0"
	// ProtoChunks: request = NarHash, uvarint n, n chunk IDs of that NAR; answer = per
	// ID a status, then (if found) the stored zstd object as a frame.
	ProtoChunks protocol.ID = "/shoal/chunks/1.0.0"
	// ProtoDelta: request = NarHash, base NarHash (zeros: none), target chunk ID,
	// uvarint n, n base chunk IDs (1..chunk.MaxDeltaBases) in dictionary order; answer
	// = a status, then (if found) the delta object (see chunk.DeltaCodec) as a frame.
	// Served only when the target is listed by the NAR's verified manifest and each
	// base by that one or the base NAR's; "busy" when every encoder is taken.
	ProtoDelta protocol.ID = "/shoal/delta/1.0.0"
)

// Bounds on every message, so a peer can't make another allocate without limit.
const (
	MaxNarInfo  = 64 << 10
	MaxManifest = 64 << 20
	MaxHave     = 128
	MaxBatch    = 64
	// maxObject bounds a chunk object: the largest chunk zstd may carry, plus zstd's
	// worst-case expansion for incompressible data.
	maxObject = chunk.MaxChunkSize + chunk.MaxChunkSize/128 + 1<<10
	// maxDeltaObject bounds a delta object likewise: a server sends one only when it
	// is smaller than the chunk's object, and rebuilds at most MaxDeltaChunk bytes.
	maxDeltaObject = chunk.MaxDeltaChunk + chunk.MaxDeltaChunk/128 + 1<<10
)

// Answer statuses.
const (
	statusFound    byte = 0
	statusNotFound byte = 1
	// statusBusy: ProtoDelta only; the server's delta encoders are all taken.
	statusBusy byte = 2
)

var (
	errTooLarge      = errors.New("message exceeds its bound")
	errUnknownStatus = errors.New("unknown status")
)

func writeFrame(w io.Writer, b []byte) error {
	var hdr [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(hdr[:], uint64(len(b)))
	if _, err := w.Write(hdr[:n]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// readFrame reads a length-prefixed message of at most limit bytes into dst's storage.
// The buffer grows as bytes arrive, not to the length the sender announced: a frame
// header costs a peer a few bytes, and must not make this side allocate the bound.
func readFrame(r *bufio.Reader, dst []byte, limit int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > uint64(limit) {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", errTooLarge, n, limit)
	}
	if cap(dst) >= int(n) {
		dst = dst[:n]
		if _, err := io.ReadFull(r, dst); err != nil {
			return nil, err
		}
		return dst, nil
	}
	buf := bytes.NewBuffer(dst[:0])
	buf.Grow(min(int(n), frameStep))
	got, err := buf.ReadFrom(io.LimitReader(r, int64(n)))
	if err != nil {
		return nil, err
	}
	if got != int64(n) {
		return nil, io.ErrUnexpectedEOF
	}
	return buf.Bytes(), nil
}

// frameStep is what readFrame allocates before any of a large frame arrived.
const frameStep = 256 << 10

func readCount(r *bufio.Reader, limit int) (int, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, err
	}
	if n == 0 || n > uint64(limit) {
		return 0, fmt.Errorf("count %d outside 1..%d", n, limit)
	}
	return int(n), nil
}

func appendHashes(b []byte, hs [][32]byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(hs)))
	for _, h := range hs {
		b = append(b, h[:]...)
	}
	return b
}

func readHashes(r *bufio.Reader, limit int) ([][32]byte, error) {
	n, err := readCount(r, limit)
	if err != nil {
		return nil, err
	}
	hs := make([][32]byte, n)
	for i := range hs {
		if _, err := io.ReadFull(r, hs[i][:]); err != nil {
			return nil, err
		}
	}
	return hs, nil
}
