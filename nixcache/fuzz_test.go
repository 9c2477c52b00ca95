package nixcache

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// FuzzDecompress feeds arbitrary compressed NAR files, as an upstream may serve them,
// to each built-in decoder (the xz program is left out: one process per input is too
// slow to fuzz, and its output is checked the same way). A decoder must end in bytes or
// an error, never a panic, and release what it holds on Close. At most 1 MiB is read:
// the caller bounds the output by NarSize.
func FuzzDecompress(f *testing.F) {
	nar := bytes.Repeat([]byte("nix-archive-1\x00\x00\x00"), 64)
	zenc, _ := zstd.NewWriter(nil)
	f.Add(byte(0), zenc.EncodeAll(nar, nil))
	zenc.Close()
	var xb bytes.Buffer
	xw, _ := xz.NewWriter(&xb)
	_, _ = xw.Write(nar)
	_ = xw.Close()
	f.Add(byte(1), xb.Bytes())
	var gb bytes.Buffer
	gw := gzip.NewWriter(&gb)
	_, _ = gw.Write(nar)
	_ = gw.Close()
	f.Add(byte(2), gb.Bytes())
	f.Add(byte(3), []byte("BZh91AY&SY"))
	f.Fuzz(func(t *testing.T, sel byte, in []byte) {
		ctx := context.Background()
		var rc io.ReadCloser
		var err error
		switch sel % 4 {
		case 0:
			rc, err = Decompress(ctx, bytes.NewReader(in), "zstd")
		case 1:
			rc, err = decompressXZGo(ctx, bytes.NewReader(in))
		case 2:
			rc, err = Decompress(ctx, bytes.NewReader(in), "gzip")
		case 3:
			rc, err = Decompress(ctx, bytes.NewReader(in), "bzip2")
		}
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(rc, 1<<20))
		_ = rc.Close()
	})
}
