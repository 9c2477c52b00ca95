package localcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunk"
)

// damagedCopies writes a cache with chunks, manifests and narinfos, then returns its
// bytes and a way to write a copy with 64 bytes overwritten at an offset.
func damagedCopies(t *testing.T) (string, []byte, []ChunkPut) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cache.db")
	c, err := Open(path, Options{InitialMmapSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	puts := realChunks(t, codec, 120)
	if err := c.PutChunks(context.Background(), puts); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if err := c.PutManifest(fmt.Sprintf("manifest-%03d", i), make([]byte, 100+i*40)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, orig, puts
}

// TestDamagedFileIsReportedNotPanicked overwrites 64 bytes at many places of a cache
// file, with ones and with zeros: Open must either open it or report ErrCorrupt, never
// panic (some of bbolt's panics come from its own goroutines and kill the process).
func TestDamagedFileIsReportedNotPanicked(t *testing.T) {
	path, orig, _ := damagedCopies(t)
	pageSize := 4096
	corrupt := 0
	for off := 0; off < len(orig); off += pageSize {
		for _, damage := range []struct {
			in   int
			fill byte
		}{{0, 0xff}, {40, 0x00}} {
			in, fill := damage.in, damage.fill
			{
				b := append([]byte(nil), orig...)
				for i := off + in; i < off+in+64 && i < len(b); i++ {
					b[i] = fill
				}
				if err := os.WriteFile(path, b, 0o600); err != nil {
					t.Fatal(err)
				}
				c, err := Open(path, Options{InitialMmapSize: 1 << 20})
				switch {
				case err == nil:
					// Undamaged structure (the bytes hit a value): reads work or fail
					// cleanly; chunk bytes are checked against their IDs by the caller.
					if _, err := c.Stats(); err != nil {
						t.Logf("offset %d+%d: stats: %v", off, in, err)
					}
					c.Close()
				case errors.Is(err, ErrCorrupt):
					corrupt++
				default:
					t.Fatalf("offset %d+%d, fill %#x: Open = %v, want ErrCorrupt or success", off, in, fill, err)
				}
			}
		}
	}
	if corrupt == 0 {
		t.Error("no damage was detected anywhere in the file")
	}
	t.Logf("%d of %d damaged copies refused as corrupt", corrupt, len(orig)/pageSize*2)
}

// TestSalvageKeepsWhatIsReadable damages a cache file until Open refuses it, then
// salvages it: the new file opens, and chunks outside the damage read back intact.
func TestSalvageKeepsWhatIsReadable(t *testing.T) {
	path, orig, puts := damagedCopies(t)
	for off := 2 * 4096; off < len(orig); off += 4096 {
		b := append([]byte(nil), orig...)
		copy(b[off:], bytes.Repeat([]byte{0xff}, 64))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Open(path, Options{InitialMmapSize: 1 << 20})
		if err == nil {
			c.Close()
			continue
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Fatal(err)
		}
		rep, err := Salvage(path, time.Second)
		if err != nil {
			t.Fatalf("offset %d: %v", off, err)
		}
		c, err = Open(path, Options{InitialMmapSize: 1 << 20})
		if err != nil {
			t.Fatalf("offset %d: the salvaged file does not open: %v", off, err)
		}
		codec, err := chunk.NewCodec()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Verify(context.Background(), codec, true); err != nil {
			t.Fatalf("offset %d: verify --repair after salvage: %v", off, err)
		}
		codec.Close()
		intact := 0
		for _, want := range puts {
			if got, err := c.GetChunk(context.Background(), want.ID); err == nil && bytes.Equal(got, want.Obj) {
				intact++
			}
		}
		c.Close()
		if intact == 0 {
			t.Errorf("offset %d: nothing salvaged (%d records kept; damage: %s)", off, rep.Kept, rep.Damage)
		}
		if _, err := os.Stat(rep.Aside); err != nil {
			t.Errorf("the damaged file was not kept: %v", err)
		}
		return
	}
	t.Fatal("no damage made Open refuse the file")
}
