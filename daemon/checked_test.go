package daemon

import (
	"testing"

	"github.com/shoal-nix/shoal/nixcache"
)

// TestCheckedNarInfoOnlyForTheSameBytes: a remembered check answers only for the exact
// bytes it was made from, so a narinfo replaced in the local cache (a new lookup after
// expiry, another source's answer) is parsed and verified again.
func TestCheckedNarInfoOnlyForTheSameBytes(t *testing.T) {
	c := newCheckedNarInfos()
	raw := []byte("StorePath: /nix/store/aaaa-demo\n")
	ni := &nixcache.NarInfo{StorePath: "/nix/store/aaaa-demo"}
	c.put("aaaa", raw, ni)
	tests := []struct {
		name     string
		hashPart string
		raw      []byte
		want     bool
	}{
		{"same bytes", "aaaa", []byte("StorePath: /nix/store/aaaa-demo\n"), true},
		{"other bytes", "aaaa", []byte("StorePath: /nix/store/aaaa-demo\nSig: x\n"), false},
		{"other path", "bbbb", raw, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := c.get(tc.hashPart, tc.raw)
			if ok != tc.want || (ok && got != ni) {
				t.Fatalf("get = %v, %v; want found %v", got, ok, tc.want)
			}
		})
	}
}
