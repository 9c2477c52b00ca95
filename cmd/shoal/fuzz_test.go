package main

import (
	"strconv"
	"testing"

	"github.com/shoal-nix/shoal/daemon"
)

// FuzzParseSize feeds arbitrary --cache-size and --peer-upload-limit values (they come
// from flags, environment variables and NixOS options): a size parses to a
// non-negative byte count or fails with an error, and a plain count reads back as
// itself.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "4096", "20GiB", "20 GiB", "500MB", "1.5KiB", "2g", "3TB", "7b", "", "-1", "1e400", "NaN", "9223372036854775807", "8EiB", ".", "1..5k"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parseSize(s)
		if err != nil {
			return
		}
		if v < 0 {
			t.Fatalf("parseSize(%q) = %d", s, v)
		}
		_ = daemon.FormatBytes(v)
		back, err := parseSize(strconv.FormatInt(v, 10))
		if err != nil || back != v {
			t.Fatalf("parseSize(%d) = %d, %v", v, back, err)
		}
	})
}
