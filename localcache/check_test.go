package localcache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// damagedCopies writes a cache with chunks, manifests and narinfos, then returns its
// bytes and a way to write a copy with 64 bytes overwritten at an offset.
func damagedCopies(t *testing.T) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cache.db")
	c, err := Open(path, Options{InitialMmapSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var puts []ChunkPut
	for i := range 120 {
		puts = append(puts, testChunk(uint64(i), 3000+i*200))
	}
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
	return path, orig
}

// TestDamagedFileIsReportedNotPanicked overwrites 64 bytes at many places of a cache
// file, with ones and with zeros: Open must either open it or report ErrCorrupt, never
// panic (some of bbolt's panics come from its own goroutines and kill the process).
func TestDamagedFileIsReportedNotPanicked(t *testing.T) {
	path, orig := damagedCopies(t)
	pageSize := 4096
	corrupt := 0
	for off := 0; off < len(orig); off += pageSize {
		for _, in := range []int{0, 40} {
			for _, fill := range []byte{0xff, 0x00} {
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
	t.Logf("%d of %d damaged copies refused as corrupt", corrupt, len(orig)/pageSize*4)
}
