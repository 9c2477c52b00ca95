package chunkstore

import (
	"context"
	"fmt"
	"io"

	"github.com/shoal-nix/shoal/chunk"
)

// ReadPackRange reads n bytes at off of pack id: one stored object, which the caller
// checks against its ID.
func (s *Store) ReadPackRange(ctx context.Context, pack chunk.ID, off uint64, n uint32) ([]byte, error) {
	if n == 0 || n > maxChunkObjectSize {
		return nil, fmt.Errorf("reading %d bytes at %d of pack %s from %s: not the size of an object", n, off, pack, s.b)
	}
	rc, err := s.b.OpenRange(ctx, PackKey(pack), int64(off), int64(n))
	if err != nil {
		return nil, fmt.Errorf("reading pack %s from %s: %w", pack, s.b, err)
	}
	defer rc.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("reading %d bytes at %d of pack %s from %s: %w", n, off, pack, s.b, err)
	}
	return buf, nil
}
