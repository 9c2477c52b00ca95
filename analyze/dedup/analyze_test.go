package dedup

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
)

// blockParams leave the chunker only 16 positions (248..263) to cut at before
// the hard cut at Max, so most random 264-byte blocks are cut at exactly their
// end. A stream of such blocks is cut at every block boundary, because the
// fingerprint restarts with each chunk: chunks are then the blocks, and every
// expectation below follows from which blocks repeat.
var blockParams = chunk.Params{Min: 248, Avg: 256, Max: 264}

// blocks returns n distinct random blocks of blockParams.Max bytes that the
// chunker, run on each block alone, leaves whole.
func blocks(t *testing.T, n int) [][]byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	var out [][]byte
	for tries := 0; len(out) < n; tries++ {
		if tries > 100*n {
			t.Fatal("no random block is left whole by the chunker")
		}
		b := make([]byte, blockParams.Max)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		c, err := chunk.NewChunker(bytes.NewReader(b), blockParams)
		if err != nil {
			t.Fatal(err)
		}
		first, err := c.Next()
		if err != nil {
			t.Fatal(err)
		}
		if len(first) == len(b) {
			out = append(out, b)
		}
	}
	return out
}

func memSource(name string, data []byte, fileSize uint64) Source {
	return Source{Name: name, NarSize: uint64(len(data)), FileSize: fileSize, Open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// storedSize is what chunk.Codec, the format's own encoder, stores for raw.
func storedSize(t *testing.T, raw []byte) uint64 {
	t.Helper()
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	return uint64(len(codec.Encode(nil, raw)))
}

// fastestSize is the size of the chunk object for raw at zstd's fastest level.
func fastestSize(t *testing.T, raw []byte) uint64 {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithSingleSegment(true))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return uint64(len(enc.EncodeAll(raw, nil)))
}

// manifestSize encodes the real version 1 manifest of data cut into parts.
func manifestSize(t *testing.T, p chunk.Params, parts ...[]byte) uint64 {
	t.Helper()
	m := manifest.Manifest{Chunker: p.Identity()}
	for _, b := range parts {
		m.NarSize += uint64(len(b))
		m.Entries = append(m.Entries, manifest.Entry{ID: chunk.Sum(b), Size: uint32(len(b)), StoredSize: uint32(storedSize(t, b))})
	}
	enc, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return uint64(len(enc))
}

func TestRunWholeNARArithmetic(t *testing.T) {
	bl := blocks(t, 4)
	a, b, c, d := bl[0], bl[1], bl[2], bl[3]
	tail := a[:100] // at most Min bytes: one chunk of its own
	nar1 := cat(a, b, c, a)
	nar2 := cat(a, b, d, tail)
	res, err := Run(context.Background(), []Source{memSource("v1", nar1, 700), memSource("v2", nar2, 650)}, Options{
		Configs: []Config{{Strategy: WholeNAR, Params: blockParams}},
		Levels:  []zstd.EncoderLevel{zstd.SpeedDefault, zstd.SpeedFastest},
		Jobs:    2,
	})
	if err != nil {
		t.Fatal(err)
	}
	cr := res.Configs[0]
	sa, sb, sc, sd, st := storedSize(t, a), storedSize(t, b), storedSize(t, c), storedSize(t, d), storedSize(t, tail)
	m1, m2 := manifestSize(t, blockParams, a, b, c, a), manifestSize(t, blockParams, a, b, d, tail)

	checks := []struct {
		name      string
		got, want uint64
	}{
		{"NAR 1 size", res.NARs[0].NarSize, 4 * 264},
		{"NAR 2 size", res.NARs[1].NarSize, 3*264 + 100},
		{"chunk references", cr.Chunks, 8},
		{"unique chunks", cr.UniqueChunks, 5},         // a b c d tail
		{"unique bytes", cr.UniqueBytes, 4*264 + 100}, // a repeats within NAR 1, a and b across NARs
		{"stored, default", cr.Stored[0], sa + sb + sc + sd + st},
		{"manifests, default", cr.Manifests[0], m1 + m2}, // equal to the real encoding's length
		{"NAR 1 new bytes", cr.PerNAR[0].NewBytes, 3 * 264},
		{"NAR 2 new chunks", cr.PerNAR[1].NewChunks, 2},
		{"NAR 2 new bytes", cr.PerNAR[1].NewBytes, 264 + 100},
		{"NAR 2 upgrade, default", cr.Upgrade(1, 0), sd + st + m2},
		{"upgrades, default", cr.Upgrades(0), sd + st + m2},
		{"total, default", cr.Total(0), sa + sb + sc + sd + st + m1 + m2},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %d, want %d", ch.name, ch.got, ch.want)
		}
	}
	var fastest uint64
	for _, blk := range [][]byte{a, b, c, d, tail} {
		fastest += fastestSize(t, blk)
	}
	if cr.Stored[1] != fastest {
		t.Errorf("stored, fastest = %d, want %d", cr.Stored[1], fastest)
	}
	if want := []uint32{100, 264, 264, 264, 264}; !equal(cr.Sizes, want) {
		t.Errorf("sizes %v, want %v", cr.Sizes, want)
	}
	if got := cr.Quantile(0.5); got != 264 {
		t.Errorf("median %d, want 264", got)
	}
	if src, ok := res.SourceFileSize(); !ok || src != 1350 {
		t.Errorf("source size %d %v, want 1350", src, ok)
	}
	if up, ok := res.SourceUpgrade(); !ok || up != 650 {
		t.Errorf("source upgrade %d %v, want 650", up, ok)
	}
}

func equal(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Reading a NAR in either order gives the same totals; only the per-NAR
// charges move to whichever NAR comes first.
func TestRunOrderMatters(t *testing.T) {
	bl := blocks(t, 3)
	x, y := cat(bl[0], bl[1]), cat(bl[0], bl[2])
	run := func(srcs ...Source) ConfigResult {
		res, err := Run(context.Background(), srcs, Options{Configs: []Config{{WholeNAR, blockParams}}, Levels: []zstd.EncoderLevel{zstd.SpeedFastest}})
		if err != nil {
			t.Fatal(err)
		}
		return res.Configs[0]
	}
	xy, yx := run(memSource("x", x, 0), memSource("y", y, 0)), run(memSource("y", y, 0), memSource("x", x, 0))
	if xy.UniqueBytes != yx.UniqueBytes || xy.Stored[0] != yx.Stored[0] || xy.Manifests[0] != yx.Manifests[0] {
		t.Errorf("totals depend on order: %+v vs %+v", xy, yx)
	}
	if xy.PerNAR[1].NewBytes != 264 || yx.PerNAR[1].NewBytes != 264 || xy.PerNAR[0].NewBytes != 528 {
		t.Errorf("per-NAR new bytes %d,%d and %d,%d; want 528,264 both ways",
			xy.PerNAR[0].NewBytes, xy.PerNAR[1].NewBytes, yx.PerNAR[0].NewBytes, yx.PerNAR[1].NewBytes)
	}
}

// narOf writes a NAR of a directory holding the given regular files, in name
// order.
func narOf(t *testing.T, files map[string]string, names ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := w.WriteHeader(&nar.Header{Path: "/" + n, Type: nar.TypeRegular, Size: int64(len(files[n]))}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, files[n]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tok is the length of a NAR string token: 8 bytes of length, the string
// padded to a multiple of 8.
func tok(s string) int { return 8 + (len(s)+7)&^7 }

func TestRunFileBoundaryArithmetic(t *testing.T) {
	// Every segment is smaller than Min, so each is exactly one chunk.
	p := chunk.Params{Min: 4096, Avg: 8192, Max: 16384}
	a, b := strings.Repeat("a", 100), strings.Repeat("b", 200)
	b2 := strings.Repeat("B", 200) // same length: padding and framing unchanged
	v1 := narOf(t, map[string]string{"a": a, "b": b}, "a", "b")
	v2 := narOf(t, map[string]string{"a": a, "b": b2}, "a", "b")

	// The segment of a file other than the first: the previous file's padding,
	// the closing ")" of its node and of its entry, then this entry's framing,
	// the length, the contents.
	segB := 4 + // a is 100 bytes: 4 bytes of padding
		2*tok(")") + tok("entry") + tok("(") + tok("name") + tok("b") + tok("node") +
		tok("(") + tok("type") + tok("regular") + tok("contents") + 8 + len(b)
	res, err := Run(context.Background(), []Source{memSource("v1", v1, 0), memSource("v2", v2, 0)}, Options{
		Configs: []Config{{FileBoundaries, p}, {WholeNAR, p}},
		Levels:  []zstd.EncoderLevel{zstd.SpeedFastest},
	})
	if err != nil {
		t.Fatal(err)
	}
	files, whole := res.Configs[0], res.Configs[1]
	if files.PerNAR[0].Chunks != 3 || files.PerNAR[1].Chunks != 3 {
		t.Errorf("file-boundary chunks per NAR %d, %d; want 3 (a, b, closing framing)", files.PerNAR[0].Chunks, files.PerNAR[1].Chunks)
	}
	if got := files.PerNAR[1].NewBytes; got != uint64(segB) {
		t.Errorf("file-boundary upgrade adds %d bytes, want %d (b's segment)", got, segB)
	}
	if whole.PerNAR[1].NewBytes != uint64(len(v2)) {
		t.Errorf("whole-NAR upgrade adds %d bytes, want the whole %d-byte NAR (one chunk)", whole.PerNAR[1].NewBytes, len(v2))
	}
	if files.UniqueBytes != uint64(len(v1)+segB) {
		t.Errorf("file-boundary unique bytes %d, want %d", files.UniqueBytes, len(v1)+segB)
	}
}

// Every segment splitNAR emits ends with a file's contents (but the last),
// and the segments are the NAR byte for byte.
func TestSplitNARSegments(t *testing.T) {
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	hdrs := []struct {
		h    nar.Header
		body string
	}{
		{nar.Header{Path: "/", Type: nar.TypeDirectory}, ""},
		{nar.Header{Path: "/bin", Type: nar.TypeDirectory}, ""},
		{nar.Header{Path: "/bin/tool", Type: nar.TypeRegular, Executable: true, Size: 13}, "#!/bin/sh\nok\n"},
		{nar.Header{Path: "/empty", Type: nar.TypeRegular}, ""},
		{nar.Header{Path: "/link", Type: nar.TypeSymlink, LinkTarget: "bin/tool"}, ""},
		{nar.Header{Path: "/z", Type: nar.TypeRegular, Size: 8}, "12345678"},
	}
	for _, h := range hdrs {
		if err := w.WriteHeader(&h.h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, h.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	whole := buf.Bytes()

	var segs [][]byte
	if err := splitNAR(bytes.NewReader(whole), func(r io.Reader) error {
		b, err := io.ReadAll(r)
		segs = append(segs, b)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.Join(segs, nil), whole) {
		t.Fatal("segments do not add up to the NAR")
	}
	ends := []string{"#!/bin/sh\nok\n", "\x00\x00\x00\x00\x00\x00\x00\x00", "12345678"}
	if len(segs) != len(ends)+1 {
		t.Fatalf("%d segments, want %d", len(segs), len(ends)+1)
	}
	for i, e := range ends {
		if !bytes.HasSuffix(segs[i], []byte(e)) {
			t.Errorf("segment %d ends %q, want %q", i, segs[i][max(0, len(segs[i])-16):], e)
		}
	}
	// The empty file's segment ends with its length, 0.
	if n := binary.LittleEndian.Uint64(segs[1][len(segs[1])-8:]); n != 0 {
		t.Errorf("empty file's segment ends with length %d", n)
	}
}

func TestSplitNARRejects(t *testing.T) {
	good := narOf(t, map[string]string{"f": "hello"}, "f")
	tests := []struct {
		name string
		nar  []byte
		want string
	}{
		{"empty", nil, "truncated"},
		{"not a NAR", []byte(strings.Repeat("x", 64)), "string of"},
		{"truncated in framing", good[:40], "truncated"},
		{"truncated in contents", good[:len(good)-54], "end 3 bytes early"},
		{"trailing bytes", cat(good, make([]byte, 8)), "after the root"},
		{"bad padding", func() []byte {
			b := bytes.Clone(good)
			b[len(b)-50] = 1 // inside the padding after "hello"
			return b
		}(), "padding"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := splitNAR(bytes.NewReader(tc.nar), func(r io.Reader) error {
				_, err := io.Copy(io.Discard, r)
				return err
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// A source that fails makes the run fail with its name, rather than report
// numbers for half a NAR.
func TestRunReportsSourceErrors(t *testing.T) {
	bad := Source{Name: "broken", Open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(io.MultiReader(bytes.NewReader(make([]byte, 5000)), errReader{})), nil
	}}
	_, err := Run(context.Background(), []Source{bad}, Options{Configs: []Config{{WholeNAR, blockParams}, {FileBoundaries, blockParams}}, Levels: []zstd.EncoderLevel{zstd.SpeedFastest}})
	if err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("error %v, want one naming the source", err)
	}
	// A file-boundary run over bytes that are not a NAR fails too.
	_, err = Run(context.Background(), []Source{memSource("junk", make([]byte, 3000), 0)}, Options{Configs: []Config{{FileBoundaries, blockParams}}, Levels: []zstd.EncoderLevel{zstd.SpeedFastest}})
	if err == nil || !strings.Contains(err.Error(), "junk") {
		t.Errorf("error %v for a non-NAR, want one naming it", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestParseParams(t *testing.T) {
	tests := []struct {
		in   string
		want chunk.Params
		ok   bool
	}{
		{"16k/64k/256k", chunk.Params{Min: 16384, Avg: 65536, Max: 262144}, true},
		{"16KiB/64KiB/256KiB", chunk.Params{Min: 16384, Avg: 65536, Max: 262144}, true},
		{"256k/1m/4m", chunk.Params{Min: 262144, Avg: 1 << 20, Max: 4 << 20}, true},
		{"64/128/256", chunk.Params{Min: 64, Avg: 128, Max: 256}, true},
		{"16k/60k/256k", chunk.Params{}, false}, // Avg not a power of two
		{"16k/64k", chunk.Params{}, false},
		{"-1/64k/256k", chunk.Params{}, false},
		{"x/64k/256k", chunk.Params{}, false},
	}
	for _, tc := range tests {
		got, err := ParseParams(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseParams(%q) = %+v, %v; want %+v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	for _, n := range []int{100, 4096, 65536, 1 << 20, 3 << 20, 1536} {
		if back, err := ParseSize(FormatSize(n)); err != nil || back != n {
			t.Errorf("ParseSize(FormatSize(%d)) = %d, %v", n, back, err)
		}
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]zstd.EncoderLevel{"fastest": zstd.SpeedFastest, "default": zstd.SpeedDefault, "better": zstd.SpeedBetterCompression, "best": zstd.SpeedBestCompression} {
		if got, err := ParseLevel(in); err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "3", "fast", "ultra"} {
		if _, err := ParseLevel(in); err == nil {
			t.Errorf("ParseLevel(%q) succeeded", in)
		}
	}
}
