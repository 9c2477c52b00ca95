package origin

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/internal/testkit"
)

// TestRawFrame: the stored frames the zstd body uses for chunks without a chunk
// object decode with a real zstd decoder, alone and concatenated, and are as long as
// rawFrameLen says, across every content size field width and block boundary.
func TestRawFrame(t *testing.T) {
	d, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var all, want []byte
	for _, n := range []int{0, 1, 255, 256, 65791, 65792, maxRawBlock - 1, maxRawBlock, maxRawBlock + 1, 256 << 10, 300 << 10} {
		b := testkit.RandomBytes(uint64(n), n)
		f := rawFrame(b)
		if len(f) != rawFrameLen(n) {
			t.Fatalf("%d bytes: frame of %d, rawFrameLen says %d", n, len(f), rawFrameLen(n))
		}
		var h zstd.Header
		if err := h.Decode(f); err != nil || !h.HasFCS || h.FrameContentSize != uint64(n) || !h.SingleSegment {
			t.Fatalf("%d bytes: header %+v, %v", n, h, err)
		}
		got, err := d.DecodeAll(f, nil)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%d bytes: decoded %d bytes, %v", n, len(got), err)
		}
		all, want = append(all, f...), append(want, b...)
	}
	if got, err := d.DecodeAll(all, nil); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("concatenated: %v", err)
	}
}
