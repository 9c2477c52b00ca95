package nixcache

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// XZDecoder names the xz decoder Decompress uses, so that callers can log
// it: the external `xz` program when it is on PATH (measured at roughly
// twice the throughput of the pure-Go decoder on NAR-sized inputs, see
// BenchmarkXZ), otherwise github.com/ulikunitz/xz.
func XZDecoder() string {
	if path, err := exec.LookPath("xz"); err == nil {
		return "xz -dc (" + path + ")"
	}
	return "github.com/ulikunitz/xz (pure Go)"
}

// Decompress returns the decompressed stream of r for a narinfo Compression
// name: "xz", "zstd", "bzip2", "gzip", or "none" (also ""; pass
// EffectiveCompression, for which "" never occurs). Closing the result
// releases the decoder (and reaps the xz process) but does not close r.
func Decompress(ctx context.Context, r io.Reader, compression string) (io.ReadCloser, error) {
	switch compression {
	case "none", "":
		return &ctxReader{ctx: ctx, r: r}, nil
	case "xz":
		if path, err := exec.LookPath("xz"); err == nil {
			return decompressXZExec(ctx, r, path)
		}
		return decompressXZGo(ctx, r)
	case "zstd":
		d, err := zstd.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("starting zstd decoder: %w", err)
		}
		rc := d.IOReadCloser()
		return &ctxReader{ctx: ctx, r: &prefixErr{r: rc, prefix: "zstd"}, close: rc.Close}, nil
	case "bzip2":
		return &ctxReader{ctx: ctx, r: &prefixErr{r: bzip2.NewReader(r), prefix: "bzip2"}}, nil
	case "gzip":
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return &ctxReader{ctx: ctx, r: &prefixErr{r: z, prefix: "gzip"}, close: z.Close}, nil
	default:
		return nil, fmt.Errorf("unsupported NAR compression %q", truncate(compression))
	}
}

// ctxReader stops a pure-Go decoder at the next Read once ctx ends, since
// decoders otherwise run until their input ends.
type ctxReader struct {
	ctx   context.Context
	r     io.Reader
	close func() error
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func (c *ctxReader) Close() error {
	if c.close != nil {
		return c.close()
	}
	return nil
}

// prefixErr names the decoder in its errors, which otherwise read like
// generic I/O failures.
type prefixErr struct {
	r      io.Reader
	prefix string
}

func (p *prefixErr) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%s: %w", p.prefix, err)
	}
	return n, err
}

func decompressXZGo(ctx context.Context, r io.Reader) (io.ReadCloser, error) {
	x, err := xz.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	return &ctxReader{ctx: ctx, r: &prefixErr{r: x, prefix: "xz"}}, nil
}

// maxStderr bounds how much of xz's stderr is kept for error messages.
const maxStderr = 4 << 10

// boundedBuffer keeps the first maxStderr bytes written to it.
type boundedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := maxStderr - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.TrimSpace(b.buf.String())
}

// xzExec decodes through an `xz -dc` child process. Input is copied into
// the child by a goroutine of ours rather than by os/exec, so that Close
// never waits on a Read of r that may be blocked on the network. Close may
// be called from another goroutine while a Read is blocked; it kills the
// process, which ends that Read.
type xzExec struct {
	ctx      context.Context
	cmd      *exec.Cmd
	stdout   io.ReadCloser
	stderr   *boundedBuffer
	copied   chan struct{} // closed when the input copy has ended
	copyErr  error         // read error from the input, valid after copied
	waitOnce sync.Once
	waitErr  error
	closed   atomic.Bool
	err      error // sticky end-of-stream result, owned by the reading goroutine
}

func decompressXZExec(ctx context.Context, r io.Reader, path string) (io.ReadCloser, error) {
	cmd := exec.CommandContext(ctx, path, "-dc")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	x := &xzExec{ctx: ctx, cmd: cmd, stdout: stdout, stderr: &boundedBuffer{}, copied: make(chan struct{})}
	cmd.Stderr = x.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", path, err)
	}
	go func() {
		in := &errRecorder{r: r}
		// Write errors only mean xz has exited, which Wait reports.
		io.Copy(stdin, in)
		x.copyErr = in.err
		close(x.copied) // before closing stdin, so xz's resulting EOF is explained
		stdin.Close()
	}()
	return x, nil
}

func (x *xzExec) Read(p []byte) (int, error) {
	if x.closed.Load() {
		return 0, errXZClosed
	}
	if x.err != nil {
		return 0, x.err
	}
	n, err := x.stdout.Read(p)
	if err == io.EOF {
		x.err = x.finish()
		return n, x.err
	}
	if err != nil {
		if x.closed.Load() {
			return n, errXZClosed
		}
		return n, fmt.Errorf("xz: reading output: %w", err)
	}
	return n, nil
}

var errXZClosed = errors.New("xz: read after Close")

// reap waits for the process exactly once, whoever gets there first.
func (x *xzExec) reap() error {
	x.waitOnce.Do(func() { x.waitErr = x.cmd.Wait() })
	return x.waitErr
}

// finish reaps the process after its output ended and decides whether the
// stream was complete: a read error from the input, a cancelled context or
// a non-zero exit status all beat a clean EOF.
func (x *xzExec) finish() error {
	waitErr := x.reap()
	if x.closed.Load() {
		return errXZClosed
	}
	if ctxErr := x.ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if waitErr == nil {
		// xz exits cleanly only after reading its input to the end, so
		// the copy has finished; it may still have ended in a read error.
		<-x.copied
	}
	select {
	case <-x.copied:
		if x.copyErr != nil {
			return fmt.Errorf("xz: reading compressed input: %w", x.copyErr)
		}
	default:
	}
	if waitErr != nil {
		if msg := x.stderr.String(); msg != "" {
			return fmt.Errorf("xz: %w: %s", waitErr, msg)
		}
		return fmt.Errorf("xz: %w", waitErr)
	}
	return io.EOF
}

// errRecorder remembers the first read error of the compressed input, which
// is the real cause when xz then complains about truncated data.
type errRecorder struct {
	r   io.Reader
	err error
}

func (e *errRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// Close kills the process if it is still running and reaps it. It does not
// close the compressed input.
func (x *xzExec) Close() error {
	if x.closed.Swap(true) {
		return nil
	}
	x.cmd.Process.Kill() // fails harmlessly if the process has exited
	x.reap()
	return nil
}
