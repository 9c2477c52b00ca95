package chunkstore

import (
	"context"
	"fmt"
)

// SwitchLayout rewrites the store's metadata from layout from to layout to, keeping
// the rest of it. `shoal store migrate` calls it once every manifest of the store is
// of the new layout: from then on publishes write the new layout, and tools that
// walk the store (verify, gc) treat it as such.
func (s *Store) SwitchLayout(ctx context.Context, from, to int) error {
	m, err := s.Meta(ctx)
	if err != nil {
		return err
	}
	if m.Version != from {
		return fmt.Errorf("store %s has layout %d, not %d", s.b, m.Version, from)
	}
	if to != FormatVersion && to != FormatPacked {
		return fmt.Errorf("store layout %d: want %d or %d", to, FormatVersion, FormatPacked)
	}
	m.Version = to
	return s.putMeta(ctx, m)
}
