package manifest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math"

	"github.com/shoal-nix/shoal/chunk"
)

// Build reads a whole NAR from r, cuts it with p, calls put for each chunk in
// order (raw is valid only during the call; put returns the stored size it
// wrote or already had), and returns the manifest with NarHash = SHA-256 and
// NarSize = byte count of everything read. It checks ctx between chunks.
//
// The hash is taken over the bytes as the chunker reads them, so the NAR is
// read once and never held whole in memory. Build does not compare NarHash
// with anything: the caller checks it against the narinfo before publishing
// the manifest.
func Build(ctx context.Context, r io.Reader, p chunk.Params, put func(id chunk.ID, raw []byte) (storedSize int, err error)) (*Manifest, error) {
	h := sha256.New()
	c, err := chunk.NewChunker(io.TeeReader(r, h), p)
	if err != nil {
		return nil, fmt.Errorf("building manifest: %w", err)
	}
	m := &Manifest{Chunker: p.Identity()}
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("building manifest at offset %d: %w", m.NarSize, context.Cause(ctx))
		}
		raw, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("building manifest at offset %d: %w", m.NarSize, err)
		}
		if len(m.Entries) == MaxEntries {
			return nil, fmt.Errorf("building manifest: NAR has more than %d chunks", MaxEntries)
		}
		id := chunk.Sum(raw)
		stored, err := put(id, raw)
		if err != nil {
			return nil, fmt.Errorf("building manifest: storing chunk %s at offset %d: %w", id, m.NarSize, err)
		}
		if stored < 0 || stored > math.MaxUint32 {
			return nil, fmt.Errorf("building manifest: storing chunk %s returned stored size %d", id, stored)
		}
		m.Entries = append(m.Entries, Entry{ID: id, Size: uint32(len(raw)), StoredSize: uint32(stored)})
		m.NarSize += uint64(len(raw))
	}
	h.Sum(m.NarHash[:0])
	return m, nil
}
