package dedup

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzSplitNAR feeds arbitrary bytes to the NAR reader that `shoal analyze` runs over
// NARs from any binary cache. Seeds are real NARs written by nix-store --dump. The
// reader must not panic or recurse without bound; what it accepts must come back
// byte for byte from its segments, and no strict prefix of an accepted NAR may be
// accepted (a NAR is self-delimiting, so a truncated download must be an error).
func FuzzSplitNAR(f *testing.F) {
	nars, err := filepath.Glob(filepath.Join("testdata", "*.nar"))
	if err != nil || len(nars) == 0 {
		f.Fatalf("no seed NARs in testdata: %v", err)
	}
	for _, p := range nars {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	split := func(in []byte) ([]byte, error) {
		var out bytes.Buffer
		err := splitNAR(bytes.NewReader(in), func(seg io.Reader) error {
			_, err := io.Copy(&out, seg)
			return err
		})
		return out.Bytes(), err
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := split(in)
		if err != nil {
			return
		}
		if !bytes.Equal(out, in) {
			t.Fatalf("segments of an accepted NAR differ from it (%d vs %d bytes)", len(out), len(in))
		}
		if len(in) > 0 {
			if _, err := split(in[:len(in)-1]); err == nil {
				t.Fatal("a NAR missing its last byte was accepted")
			}
		}
	})
}
