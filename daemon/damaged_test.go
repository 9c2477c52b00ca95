package daemon_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/cachetest"
)

// TestDamagedCacheIsMovedAside damages the cache file's page headers, as a bad disk
// or a stray write would: the daemon must start, with an empty cache,
// and keep the damaged file for salvage.
func TestDamagedCacheIsMovedAside(t *testing.T) {
	c := cachetest.New(t, "damage-1")
	ni := c.Add(t, cachetest.HashPart("damage"), "damage-1.0", noise(10, 200<<10), "none")
	state := t.TempDir()
	d, err := daemon.New(daemon.Config{Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey}, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	path := filepath.Join(state, daemon.CacheFile)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	junk := []byte(strings.Repeat("\xff", 64))
	for off := int64(2 * 4096); off < fi.Size(); off += 4096 {
		if _, err := f.WriteAt(junk, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	_, url := startDaemon(t, daemon.Config{Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey}, StateDir: state})
	status, body, err := fetchNAR(t, url, ni)
	if err != nil || status != 200 || len(body) != int(ni.NarSize) {
		t.Fatalf("NAR after restart: status %d, %d bytes, err %v", status, len(body), err)
	}
	broken, _ := filepath.Glob(path + ".broken-*")
	if len(broken) != 1 {
		t.Errorf("damaged files kept: %v, want one", broken)
	}
}
