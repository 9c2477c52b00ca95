package origin

import (
	"bytes"
	"io"
	"os/exec"
	"testing"

	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/ulikunitz/xz"
)

// xzBody makes the whole xz body of nar with the framing the server streams, fed in
// pieces of varying size as chunks would arrive.
func xzBody(nar []byte) []byte {
	size := uint64(len(nar))
	out := bytes.NewBuffer(make([]byte, 0, xzSize(size)))
	out.Write(xzHeader())
	var off uint64
	for rest, step := nar, 1; len(rest) > 0; step = step*7%100_003 + 1 {
		k := min(len(rest), step)
		xzFrame(rest[:k], &off, size, func(b []byte) error { out.Write(b); return nil })
		rest = rest[k:]
	}
	out.WriteByte(0x00)
	out.Write(xzTrailer(size))
	return out.Bytes()
}

// Two independent decoders (Go's ulikunitz/xz and the xz program, which uses liblzma
// like Nix's libarchive) must read the body back, for sizes around the piece boundaries.
func TestXZBodyDecodes(t *testing.T) {
	xzProg, err := exec.LookPath("xz")
	if err != nil {
		t.Fatalf("the xz program is needed to check the xz bodies (Debian xz-utils): %v", err)
	}
	for _, n := range []int{0, 1, 100, xzPieceSize - 1, xzPieceSize, xzPieceSize + 1, 3*xzPieceSize + 17, 1 << 20} {
		nar := testkit.RandomBytes(uint64(n), n)
		body := xzBody(nar)
		if got := xzSize(uint64(n)); got != uint64(len(body)) {
			t.Fatalf("%d bytes: xzSize says %d, body is %d", n, got, len(body))
		}
		if got, want := xzPos(uint64(n))+1+uint64(len(xzTrailer(uint64(n)))), uint64(len(body)); got != want {
			t.Fatalf("%d bytes: positions add up to %d, body is %d", n, got, want)
		}
		r, err := xz.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("%d bytes: ulikunitz/xz: %v", n, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, nar) {
			t.Fatalf("%d bytes: ulikunitz/xz read %d bytes (equal: %t), err %v", n, len(got), bytes.Equal(got, nar), err)
		}
		cmd := exec.Command(xzProg, "-dc")
		cmd.Stdin = bytes.NewReader(body)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || !bytes.Equal(out, nar) || stderr.Len() > 0 {
			t.Fatalf("%d bytes: xz -dc: %v, equal %t, stderr %q", n, err, bytes.Equal(out, nar), stderr.String())
		}
	}
}
