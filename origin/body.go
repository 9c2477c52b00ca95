package origin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"

	"github.com/shoal-nix/shoal/nixcache"
)

// encoding is how a NAR body is sent: the compression its narinfo states.
type encoding struct {
	name        string
	contentType string
}

var (
	encNone = encoding{"none", "application/x-nix-nar"}
	encZstd = encoding{"zstd", "application/zstd"}
	encXZ   = encoding{"xz", "application/x-xz"}
)

// encodingOf picks the body encoding for a narinfo's Compression. bzip2 (what a narinfo
// without Compression means) has no encoder here: such caches predate 2017, and a
// reassembled bzip2 body would cost more CPU than every other route together.
func encodingOf(ni *nixcache.NarInfo) (encoding, error) {
	switch c := ni.EffectiveCompression(); c {
	case "none":
		return encNone, nil
	case "zstd":
		return encZstd, nil
	case "xz":
		return encXZ, nil
	default:
		return encoding{}, &statusError{http.StatusNotImplemented, fmt.Errorf("%s: NARs compressed with %q cannot be reassembled (xz, zstd and none can)", ni.StorePath, c)}
	}
}

// size is the length of the body: known before anything is fetched for every encoding
// served, which is what lets responses carry Content-Length and answer Range.
func (n *nar) size() int64 {
	switch n.enc {
	case encZstd:
		return int64(n.storedN)
	case encXZ:
		return int64(xzSize(n.info.NarSize))
	}
	return int64(n.info.NarSize)
}

// spans returns, per manifest entry, the offset in the body where its bytes begin.
func (n *nar) spans() []int64 {
	out := make([]int64, len(n.man.Entries))
	var nar, stored uint64
	for i, e := range n.man.Entries {
		switch n.enc {
		case encZstd:
			out[i] = int64(stored)
		case encXZ:
			out[i] = int64(xzPos(nar))
		default:
			out[i] = int64(nar)
		}
		nar += uint64(e.Size)
		stored += uint64(n.frameLen(i))
	}
	return out
}

// frameLen is the length of entry i's zstd frame in the zstd body: its chunk object,
// or for an entry without one (a delta-primary store's), the frame verification
// measured (see Server.rebuiltFrame).
func (n *nar) frameLen(i int) uint32 {
	if n.frames != nil {
		return n.frames[i]
	}
	return n.man.Entries[i].StoredSize
}

// zstdBodySize is the length of the zstd body: the frames' lengths added up.
func (n *nar) zstdBodySize() uint64 {
	var sum uint64
	for i := range n.man.Entries {
		sum += uint64(n.frameLen(i))
	}
	return sum
}

// writeFrom writes the body from offset start to its end.
func (s *Server) writeFrom(ctx context.Context, n *nar, w io.Writer, start int64) error {
	sw := &skipWriter{w: w}
	spans := n.spans()
	// The first entry whose bytes reach past start; everything before it is skipped.
	first := sort.Search(len(spans), func(i int) bool {
		end := n.size()
		if i+1 < len(spans) {
			end = spans[i+1]
		}
		return end > start
	})
	var pos int64
	if n.enc == encXZ {
		if err := sw.emit(xzHeader(), &pos, start); err != nil {
			return err
		}
	}
	if first < len(spans) {
		pos = spans[first]
		var narOff uint64
		for _, e := range n.man.Entries[:first] {
			narOff += uint64(e.Size)
		}
		wantRaw := n.enc != encZstd
		err := s.each(ctx, n, first, wantRaw, wantRaw, func(i int, obj, raw []byte) error {
			switch n.enc {
			case encZstd:
				return sw.emit(obj, &pos, start)
			case encNone:
				return sw.emit(raw, &pos, start)
			}
			return xzFrame(raw, &narOff, n.info.NarSize, func(b []byte) error { return sw.emit(b, &pos, start) })
		})
		if err != nil {
			return err
		}
	} else {
		// start is past every entry's bytes (or there are none): only a trailer is left.
		pos = n.size()
		if n.enc == encXZ {
			pos = int64(xzPos(n.info.NarSize))
		}
	}
	if n.enc == encXZ {
		if err := sw.emit(append([]byte{0x00}, xzTrailer(n.info.NarSize)...), &pos, start); err != nil {
			return err
		}
	}
	if pos != n.size() {
		return fmt.Errorf("internal error: %s body ended at %d of %d bytes", n.enc.name, pos, n.size())
	}
	return nil
}

// skipWriter writes the part of each piece at or after the body offset start.
type skipWriter struct{ w io.Writer }

func (s *skipWriter) emit(p []byte, pos *int64, start int64) error {
	at := *pos
	*pos += int64(len(p))
	if *pos <= start {
		return nil
	}
	if at < start {
		p = p[start-at:]
	}
	_, err := s.w.Write(p)
	return err
}

// body is the NAR body as an io.ReadSeeker for http.ServeContent, which then answers
// HEAD, Range, If-Range and If-None-Match. Bytes are made on demand: a Read after a
// Seek starts a producer at that offset, so a Range request fetches only the chunks
// from its start on.
type body struct {
	ctx context.Context
	s   *Server
	n   *nar
	pos int64

	pr     *io.PipeReader
	at     int64 // offset the producer's next byte has
	cancel context.CancelFunc
	done   chan struct{}

	mu  sync.Mutex
	err error // first producer failure, other than being stopped
}

func newBody(ctx context.Context, s *Server, n *nar) *body { return &body{ctx: ctx, s: s, n: n} }

func (b *body) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += b.pos
	case io.SeekEnd:
		off += b.n.size()
	default:
		return 0, errors.New("seek: bad whence")
	}
	if off < 0 {
		return 0, errors.New("seek: negative offset")
	}
	b.pos = off
	return off, nil
}

func (b *body) Read(p []byte) (int, error) {
	if b.pos >= b.n.size() {
		return 0, io.EOF
	}
	if b.pr == nil || b.at != b.pos {
		b.stop()
		b.startAt(b.pos)
	}
	k, err := b.pr.Read(p)
	b.pos += int64(k)
	b.at = b.pos
	return k, err
}

func (b *body) startAt(off int64) {
	ctx, cancel := context.WithCancel(b.ctx)
	pr, pw := io.Pipe()
	b.pr, b.at, b.cancel, b.done = pr, off, cancel, make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		err := b.s.writeFrom(ctx, b.n, pw, off)
		if err != nil && ctx.Err() == nil && !errors.Is(err, io.ErrClosedPipe) {
			b.mu.Lock()
			if b.err == nil {
				b.err = err
			}
			b.mu.Unlock()
		}
		pw.CloseWithError(err)
	}(b.done)
}

func (b *body) stop() {
	if b.pr == nil {
		return
	}
	b.cancel()
	b.pr.Close()
	<-b.done
	b.pr = nil
}

// failure returns the first error a producer met, if any.
func (b *body) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Close stops the producer.
func (b *body) Close() error {
	b.stop()
	return nil
}
