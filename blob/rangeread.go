package blob

import (
	"fmt"
	"io"
)

// checkRange refuses ranges no backend can serve, before any request is made.
func checkRange(key string, off, n int64) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if off < 0 || n <= 0 || off > (1<<62)-n {
		return fmt.Errorf("blob: reading %s: invalid range of %d bytes at %d", key, n, off)
	}
	return nil
}

// exactReader yields exactly n bytes of r: more is cut off, less is
// io.ErrUnexpectedEOF. Backends wrap every ranged body in it, so a server that
// sends a short or long body cannot shift the objects a caller cuts out of it.
type exactReader struct {
	r    io.ReadCloser
	left int64
	what string
}

func newExactReader(r io.ReadCloser, n int64, what string) *exactReader {
	return &exactReader{r: r, left: n, what: what}
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF {
		if e.left > 0 {
			return n, fmt.Errorf("%s: body ended %d bytes early: %w", e.what, e.left, io.ErrUnexpectedEOF)
		}
		return n, io.EOF
	}
	if err != nil {
		return n, fmt.Errorf("%s: %w", e.what, err)
	}
	if e.left == 0 {
		return n, io.EOF
	}
	return n, nil
}

func (e *exactReader) Close() error { return e.r.Close() }
