package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/shoal-nix/shoal/manifest"
)

// Reader reads a verified NAR from the local cache, chunk by chunk, each checked
// against its ID as it is read: it is an io.ReadSeeker, so http.ServeContent can
// answer ranges from it. A chunk the disk lost or rotted fails the read (and is
// dropped, to be fetched again); Err says so after the response, whose body is then
// short of its Content-Length, which is how a client learns that it broke.
type Reader struct {
	f    *Fetcher
	ctx  context.Context
	m    *manifest.Manifest
	ends []int64 // ends[i]: offset just past entry i

	off int64
	cur int    // entry buf holds, or -1
	buf []byte // raw bytes of entry cur
	err error
}

// NewReader returns a Reader over the NAR m describes, which must have been verified
// (see Progress.Wait) and whose chunks the caller holds a lease on.
func (f *Fetcher) NewReader(ctx context.Context, m *manifest.Manifest) *Reader {
	ends := make([]int64, len(m.Entries))
	var off int64
	for i, e := range m.Entries {
		off += int64(e.Size)
		ends[i] = off
	}
	return &Reader{f: f, ctx: ctx, m: m, ends: ends, cur: -1}
}

// Size is the NAR's size.
func (r *Reader) Size() int64 { return int64(r.m.NarSize) }

// Err returns the error that ended reading early, if any.
func (r *Reader) Err() error { return r.err }

func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.off >= r.Size() {
		return 0, io.EOF
	}
	i := sort.Search(len(r.ends), func(i int) bool { return r.ends[i] > r.off })
	if i == len(r.ends) {
		r.err = fmt.Errorf("NAR %s: offset %d past the manifest's chunks", manifest.Key(r.m.NarHash), r.off)
		return 0, r.err
	}
	if i != r.cur {
		raw, err := r.f.LocalChunk(r.ctx, r.buf, r.m.Entries[i])
		if err != nil {
			r.err = fmt.Errorf("NAR %s: %w", manifest.Key(r.m.NarHash), err)
			return 0, r.err
		}
		r.buf, r.cur = raw, i
	}
	start := r.ends[i] - int64(len(r.buf))
	n := copy(p, r.buf[r.off-start:])
	r.off += int64(n)
	return n, nil
}

func (r *Reader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.Size()
	default:
		return 0, errors.New("fetch.Reader.Seek: invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("fetch.Reader.Seek: negative position")
	}
	r.off = offset
	return offset, nil
}
