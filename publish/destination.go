package publish

import (
	"context"
	"errors"
	"fmt"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunkstore"
)

// errFound stops a listing at its first key.
var errFound = errors.New("found a key")

// checkDestination refuses to write a store where one does not belong: into the
// cache being published, or into a directory or bucket that holds other things.
// Store files mixed into a binary cache or someone's directory are hard to tell
// apart and clean up afterwards. An existing store is fine (Init checks that it
// was cut the same way from the same cache), and so is an empty place.
func (p *Publisher) checkDestination(ctx context.Context) error {
	if p.src.String() == p.dst.String() {
		return fmt.Errorf("the chunk store %s is the cache being published: give the store a place of its own", p.dst)
	}
	_, err := p.dst.Meta(ctx)
	if err == nil || !errors.Is(err, shoal.ErrNotFound) {
		return err
	}
	var first string
	err = p.dst.Backend().List(ctx, "", func(key string) error {
		first = key
		return errFound
	})
	switch {
	case errors.Is(err, blob.ErrNotSupported):
		return nil // nothing to go by; Init still writes the metadata first
	case err != nil && !errors.Is(err, errFound):
		return fmt.Errorf("checking that %s is empty or a chunk store: %w", p.dst, err)
	case first != "":
		// Workers of a sharded publish start at once on an empty store: another one
		// may have written the metadata since it was read above.
		if _, err := p.dst.Meta(ctx); err == nil {
			return nil
		}
		return fmt.Errorf("%s is not a chunk store (it has no %s) and not empty (it holds %s): publish into an empty directory or bucket, or into an existing store", p.dst, chunkstore.MetaKey, first)
	}
	return nil
}
