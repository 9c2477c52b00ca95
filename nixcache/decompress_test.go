package nixcache

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// narLike returns deterministic data that compresses roughly like a NAR:
// runs of repeated text (paths, strings, ELF padding) mixed with
// incompressible stretches (code, already-compressed files).
func narLike(size int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	words := []string{"/nix/store/", "lib", "share/man/", "-2.40-66", "\x00\x00\x00\x00", "glibc", ".so.6", "ELF", "usr/bin/env", "\n"}
	out := make([]byte, 0, size)
	for len(out) < size {
		if rng.IntN(4) == 0 {
			n := 64 + rng.IntN(4096)
			for i := 0; i < n; i++ {
				out = append(out, byte(rng.Uint32()))
			}
			continue
		}
		for i := rng.IntN(512); i >= 0; i-- {
			out = append(out, words[rng.IntN(len(words))]...)
		}
	}
	return out[:size]
}

func xzGo(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// xzAny compresses with the xz tool when it is available because it is much
// faster than the pure-Go encoder under the race detector.
func xzAny(t testing.TB, data []byte) []byte {
	t.Helper()
	if _, err := exec.LookPath("xz"); err == nil {
		return xzTool(t, data)
	}
	return xzGo(t, data)
}

// xzTool compresses like Nix does (preset 6, one stream); it skips the
// test when xz is not installed.
func xzTool(t testing.TB, data []byte) []byte {
	t.Helper()
	path, err := exec.LookPath("xz")
	if err != nil {
		t.Skip("xz not on PATH")
	}
	cmd := exec.Command(path, "-6", "-T1", "-c")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func zstdEnc(t testing.TB, data []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(data, nil)
}

func gzipEnc(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type decoder func(ctx context.Context, r io.Reader) (io.ReadCloser, error)

func byName(compression string) decoder {
	return func(ctx context.Context, r io.Reader) (io.ReadCloser, error) {
		return Decompress(ctx, r, compression)
	}
}

func xzExecDecoder(t testing.TB) decoder {
	path, err := exec.LookPath("xz")
	if err != nil {
		t.Skip("xz not on PATH")
	}
	return func(ctx context.Context, r io.Reader) (io.ReadCloser, error) {
		return decompressXZExec(ctx, r, path)
	}
}

func readAllClose(rc io.ReadCloser) ([]byte, error) {
	data, err := io.ReadAll(rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	return data, err
}

func TestDecompressRoundTrip(t *testing.T) {
	data := narLike(512<<10, 1)
	fixture, err := os.ReadFile("testdata/fixture.txt")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		dec        func(t *testing.T) decoder
		compressed func(t *testing.T) []byte
		want       []byte
	}{
		{"none", func(*testing.T) decoder { return byName("none") }, func(*testing.T) []byte { return data }, data},
		{"empty name means none", func(*testing.T) decoder { return byName("") }, func(*testing.T) []byte { return data }, data},
		{"zstd", func(*testing.T) decoder { return byName("zstd") }, func(t *testing.T) []byte { return zstdEnc(t, data) }, data},
		{"zstd concatenated frames", func(*testing.T) decoder { return byName("zstd") }, func(t *testing.T) []byte {
			return append(zstdEnc(t, data[:100<<10]), zstdEnc(t, data[100<<10:])...)
		}, data},
		{"gzip", func(*testing.T) decoder { return byName("gzip") }, func(t *testing.T) []byte { return gzipEnc(t, data) }, data},
		{"bzip2 fixture", func(*testing.T) decoder { return byName("bzip2") }, func(t *testing.T) []byte {
			b, err := os.ReadFile("testdata/fixture.txt.bz2")
			if err != nil {
				t.Fatal(err)
			}
			return b
		}, fixture},
		{"xz default", func(*testing.T) decoder { return byName("xz") }, func(t *testing.T) []byte { return xzGo(t, data) }, data},
		{"xz pure Go, Go-compressed", func(*testing.T) decoder { return decompressXZGo }, func(t *testing.T) []byte { return xzGo(t, data) }, data},
		{"xz pure Go, tool-compressed", func(*testing.T) decoder { return decompressXZGo }, func(t *testing.T) []byte { return xzTool(t, data) }, data},
		{"xz exec, Go-compressed", func(t *testing.T) decoder { return xzExecDecoder(t) }, func(t *testing.T) []byte { return xzGo(t, data) }, data},
		{"xz exec, tool-compressed", func(t *testing.T) decoder { return xzExecDecoder(t) }, func(t *testing.T) []byte { return xzTool(t, data) }, data},
		{"xz exec, empty output", func(t *testing.T) decoder { return xzExecDecoder(t) }, func(t *testing.T) []byte { return xzGo(t, nil) }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dec := tt.dec(t)
			rc, err := dec(context.Background(), bytes.NewReader(tt.compressed(t)))
			if err != nil {
				t.Fatal(err)
			}
			got, err := readAllClose(rc)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("decompressed %d bytes, want %d (content differs)", len(got), len(tt.want))
			}
		})
	}
}

func TestDecompressErrors(t *testing.T) {
	data := narLike(256<<10, 2)
	garbage := narLike(64<<10, 3)
	xzData := xzGo(t, data)
	tests := []struct {
		name  string
		dec   func(t *testing.T) decoder
		input []byte
	}{
		{"zstd garbage", func(*testing.T) decoder { return byName("zstd") }, garbage},
		{"zstd truncated", func(*testing.T) decoder { return byName("zstd") }, zstdEnc(t, data)[:1000]},
		{"bzip2 garbage", func(*testing.T) decoder { return byName("bzip2") }, garbage},
		{"gzip garbage", func(*testing.T) decoder { return byName("gzip") }, garbage},
		{"xz pure Go garbage", func(*testing.T) decoder { return decompressXZGo }, garbage},
		{"xz pure Go truncated", func(*testing.T) decoder { return decompressXZGo }, xzData[:len(xzData)/2]},
		{"xz exec garbage", func(t *testing.T) decoder { return xzExecDecoder(t) }, garbage},
		{"xz exec truncated", func(t *testing.T) decoder { return xzExecDecoder(t) }, xzData[:len(xzData)/2]},
		{"xz exec trailing garbage", func(t *testing.T) decoder { return xzExecDecoder(t) }, append(append([]byte{}, xzData...), garbage[:100]...)},
		{"xz exec empty input", func(t *testing.T) decoder { return xzExecDecoder(t) }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc, err := tt.dec(t)(context.Background(), bytes.NewReader(tt.input))
			if err != nil {
				return // rejected up front
			}
			if _, err := readAllClose(rc); err == nil {
				t.Fatal("decoding bad input succeeded")
			}
		})
	}
	if _, err := Decompress(context.Background(), bytes.NewReader(nil), "br"); err == nil || !strings.Contains(err.Error(), "unsupported") {
		t.Errorf("Decompress(br) = %v, want unsupported", err)
	}
}

func TestXZExecStderrInError(t *testing.T) {
	rc, err := xzExecDecoder(t)(context.Background(), strings.NewReader("definitely not xz"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = readAllClose(rc)
	if err == nil || !strings.Contains(err.Error(), "xz:") || !strings.Contains(err.Error(), "format") {
		t.Errorf("error %v should carry xz's complaint about the format", err)
	}
}

// failingReader returns data and then a network-like error.
type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

func TestDecompressInputErrorSurfaces(t *testing.T) {
	data := narLike(256<<10, 4)
	xzData := xzGo(t, data)
	errBroken := errors.New("connection reset by peer")
	tests := []struct {
		name  string
		dec   func(t *testing.T) decoder
		input []byte
	}{
		{"xz exec", func(t *testing.T) decoder { return xzExecDecoder(t) }, xzData[:len(xzData)/2]},
		{"xz exec, full stream then error", func(t *testing.T) decoder { return xzExecDecoder(t) }, xzData},
		{"xz pure Go", func(*testing.T) decoder { return decompressXZGo }, xzData[:len(xzData)/2]},
		{"zstd", func(*testing.T) decoder { return byName("zstd") }, zstdEnc(t, data)[:1000]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc, err := tt.dec(t)(context.Background(), &failingReader{r: bytes.NewReader(tt.input), err: errBroken})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := readAllClose(rc); !errors.Is(err, errBroken) {
				t.Fatalf("error = %v, want the input's error", err)
			}
		})
	}
}

// blockingReader hands out data and then blocks until released, like a
// stalled HTTP body.
type blockingReader struct {
	data    []byte
	release chan struct{}
}

func (b *blockingReader) Read(p []byte) (int, error) {
	if len(b.data) > 0 {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	<-b.release
	return 0, errors.New("released")
}

func TestXZExecEarlyCloseReaps(t *testing.T) {
	dec := xzExecDecoder(t)
	data := narLike(256<<10, 5)
	in := &blockingReader{data: xzGo(t, data), release: make(chan struct{})}
	defer close(in.release)
	rc, err := dec(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1000)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, data[:1000]) {
		t.Fatal("wrong prefix")
	}
	done := make(chan struct{})
	go func() { rc.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked")
	}
	x := rc.(*xzExec)
	if x.cmd.ProcessState == nil {
		t.Fatal("process not reaped after Close")
	}
	if _, err := rc.Read(buf); err == nil {
		t.Error("Read after Close succeeded")
	}
}

func TestDecompressContextCancel(t *testing.T) {
	data := narLike(1<<20, 6)
	tests := []struct {
		name  string
		dec   func(t *testing.T) decoder
		input func(t *testing.T) io.Reader
	}{
		{"xz exec, stalled input", func(t *testing.T) decoder { return xzExecDecoder(t) }, func(t *testing.T) io.Reader {
			r := &blockingReader{data: xzAny(t, data)[:10000], release: make(chan struct{})}
			t.Cleanup(func() { close(r.release) })
			return r
		}},
		{"xz pure Go", func(*testing.T) decoder { return decompressXZGo }, func(t *testing.T) io.Reader { return bytes.NewReader(xzGo(t, data)) }},
		{"zstd", func(*testing.T) decoder { return byName("zstd") }, func(t *testing.T) io.Reader { return bytes.NewReader(zstdEnc(t, data)) }},
		{"none", func(*testing.T) decoder { return byName("none") }, func(t *testing.T) io.Reader { return bytes.NewReader(data) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rc, err := tt.dec(t)(ctx, tt.input(t))
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			cancel()
			errc := make(chan error, 1)
			go func() { _, err := io.Copy(io.Discard, rc); errc <- err }()
			select {
			case err := <-errc:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("error after cancel = %v, want context.Canceled", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("reading did not stop after cancel")
			}
		})
	}
}

func TestXZDecoderName(t *testing.T) {
	got := XZDecoder()
	_, err := exec.LookPath("xz")
	if wantExec := err == nil; strings.HasPrefix(got, "xz -dc") != wantExec {
		t.Errorf("XZDecoder() = %q with xz on PATH = %v", got, wantExec)
	}
	t.Setenv("PATH", t.TempDir())
	if got := XZDecoder(); !strings.Contains(got, "pure Go") {
		t.Errorf("XZDecoder() without xz on PATH = %q", got)
	}
}

// BenchmarkXZ compares the decoders Decompress chooses between on a
// 100 MiB NAR-like input compressed as Nix does (xz -6, one block). With -short
// (the test command's smoke run) the input is 8 MiB: compressing 100 MiB with xz
// takes longer than the rest of the benchmarks together.
func BenchmarkXZ(b *testing.B) {
	size := 100 << 20
	if testing.Short() {
		size = 8 << 20
	}
	data := narLike(size, 7)
	compressed := xzTool(b, data)
	b.Logf("input %d bytes, xz %d bytes (ratio %.2f)", len(data), len(compressed), float64(len(data))/float64(len(compressed)))
	for _, bm := range []struct {
		name string
		dec  decoder
	}{
		{"exec", xzExecDecoder(b)},
		{"go", decompressXZGo},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				rc, err := bm.dec(context.Background(), bytes.NewReader(compressed))
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, rc)
				rc.Close()
				if err != nil || n != int64(len(data)) {
					b.Fatalf("decoded %d bytes: %v", n, err)
				}
			}
		})
	}
}

// TestXZExecCloseUnblocksRead closes the decoder from another goroutine
// while a Read waits on a stalled input: the Read must end and the process
// must be reaped.
func TestXZExecCloseUnblocksRead(t *testing.T) {
	dec := xzExecDecoder(t)
	in := &blockingReader{data: xzAny(t, narLike(1<<20, 9))[:5000], release: make(chan struct{})}
	defer close(in.release)
	rc, err := dec(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, rc)
		readErr <- err
	}()
	time.Sleep(100 * time.Millisecond) // let the reader block
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("Read after a concurrent Close ended without error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
	if rc.(*xzExec).cmd.ProcessState == nil {
		t.Error("process not reaped")
	}
}
