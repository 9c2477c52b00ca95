package maintain

import (
	"context"
	"testing"

	"github.com/shoal-nix/shoal/chunkstore"
)

// A store from before the NAR URL and name indexes gets them; a second run has nothing to add.
func TestIndex(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, open(t))
			a := f.add(t, "pkg-1", version(3, 1))
			b := f.add(t, "pkg-2", version(3, 2))
			f.publish(t, a, b)
			for _, hp := range []string{a, b} {
				key, _ := chunkstore.NarURLKey(f.nis[hp].URL)
				if err := f.store.Backend().Delete(ctx, key); err != nil {
					t.Fatal(err)
				}
				nkey, _ := chunkstore.NameKey(f.nis[hp].StorePath)
				if err := f.store.Backend().Delete(ctx, nkey); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := Index(ctx, f.store, 0, nil)
			if err != nil || rep.NarInfos != 2 || rep.Added != 2 || rep.Names != 2 || rep.Refused != 0 {
				t.Fatalf("index: %+v, %v", rep, err)
			}
			for _, hp := range []string{a, b} {
				if got, err := f.store.NarURL(ctx, f.nis[hp].URL); err != nil || got != hp {
					t.Errorf("%s: index says %q, %v", hp, got, err)
				}
				if ok, err := f.store.HasName(ctx, f.nis[hp].StorePath); !ok || err != nil {
					t.Errorf("%s: not in the name index (%v)", hp, err)
				}
			}
			if rep, err := Index(ctx, f.store, 0, nil); err != nil || rep.Added != 0 || rep.Names != 0 {
				t.Fatalf("second index: %+v, %v", rep, err)
			}
		})
	}
}
