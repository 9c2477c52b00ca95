package chunk

import (
	"fmt"
	"io"
)

// minBufferSize keeps small-parameter chunkers from issuing a read per chunk.
const minBufferSize = 64 << 10

// maxEmptyReads bounds how often a reader may return (0, nil) in a row before
// the chunker gives up with io.ErrNoProgress, as bufio does.
const maxEmptyReads = 100

// Chunker cuts a stream with canonical FastCDC-2020: the two-bytes-per-
// iteration ("rolling two bytes") loop over the GEAR and GEAR<<1 tables, masks
// from the paper's table at normalization level 2 (maskS =
// masks[log2(Avg)+2] before Avg, maskL = masks[log2(Avg)-2] after), the
// first match at or after Min (rounded down to even) ending the chunk before
// the matching byte, a hard cut at Max, and a remainder of at most Min bytes
// forming one chunk.
//
// The cut points depend only on the bytes, never on how the reader delivers
// them: the chunker always looks at Max bytes (or all that remain) before it
// cuts.
type Chunker struct {
	r            io.Reader
	p            Params
	maskS, maskL uint64

	buf        []byte
	start, end int   // buf[start:end] is read but not yet returned
	eof        bool  // r has returned io.EOF
	err        error // a read error, returned from every later Next
}

// NewChunker returns a Chunker reading from r. It fails only if p does not
// Validate.
func NewChunker(r io.Reader, p Params) (*Chunker, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("creating chunker: %w", err)
	}
	small, large := p.maskBits()
	return &Chunker{
		r:     r,
		p:     p,
		maskS: masks[small],
		maskL: masks[large],
		buf:   make([]byte, max(2*p.Max, minBufferSize)),
	}, nil
}

// Reset makes c read a new stream from r, reusing its buffer.
func (c *Chunker) Reset(r io.Reader) {
	c.r = r
	c.start, c.end = 0, 0
	c.eof = false
	c.err = nil
}

// Next returns the next chunk. The slice aliases the chunker's buffer and is
// valid only until the next call to Next or Reset. After the last chunk, and
// at once for an empty stream, Next returns io.EOF. A read error is returned
// wrapped, and again from every later call: the cut points after a failed
// read could not be trusted.
func (c *Chunker) Next() ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	if c.end-c.start < c.p.Max && !c.eof {
		if err := c.fill(); err != nil {
			c.err = err
			return nil, err
		}
	}
	if c.start == c.end {
		return nil, io.EOF
	}
	n := c.cut(c.buf[c.start:c.end])
	chunk := c.buf[c.start : c.start+n : c.start+n]
	c.start += n
	return chunk, nil
}

// fill moves the unreturned bytes to the front of the buffer and reads until
// the buffer is full or the stream ends. It does not use io.ReadFull because
// that turns a reader's own io.ErrUnexpectedEOF (a truncated decompressor
// stream, say) into what looks like a clean short read.
func (c *Chunker) fill() error {
	c.end = copy(c.buf, c.buf[c.start:c.end])
	c.start = 0
	empty := 0
	for c.end < len(c.buf) {
		n, err := c.r.Read(c.buf[c.end:])
		c.end += n
		switch {
		case err == io.EOF:
			c.eof = true
			return nil
		case err != nil:
			return fmt.Errorf("reading chunker input: %w", err)
		case n == 0:
			empty++
			if empty >= maxEmptyReads {
				return fmt.Errorf("reading chunker input: %w", io.ErrNoProgress)
			}
		default:
			empty = 0
		}
	}
	return nil
}

// cut returns the length of the first chunk of data, which holds at least
// Max bytes or the rest of the stream.
//
// The loops look at two bytes an iteration: shifting the hash by two and
// adding GEAR<<1 of the even byte yields the one-byte hash shifted left by
// one, which is tested against the mask shifted left by one; adding GEAR of
// the odd byte then yields the one-byte hash itself. The scan starts at
// Min&^1 and the small mask is used up to Avg&^1, as in the reference, so odd
// parameters cut where the reference cuts. Walking a shrinking slice two
// bytes at a time lets the compiler drop the bounds checks.
func (c *Chunker) cut(data []byte) int {
	n := len(data)
	if n <= c.p.Min {
		return n
	}
	n = min(n, c.p.Max)
	center := min(c.p.Avg, n) &^ 1
	end := n &^ 1

	maskS, maskL := c.maskS, c.maskL
	maskSs, maskLs := maskS<<1, maskL<<1
	var fp uint64

	d := data[c.p.Min&^1 : center]
	for len(d) >= 2 {
		fp = fp<<2 + gearShifted[d[0]]
		if fp&maskSs == 0 {
			return center - len(d)
		}
		fp += gear[d[1]]
		if fp&maskS == 0 {
			return center - len(d) + 1
		}
		d = d[2:]
	}

	d = data[center:end]
	for len(d) >= 2 {
		fp = fp<<2 + gearShifted[d[0]]
		if fp&maskLs == 0 {
			return end - len(d)
		}
		fp += gear[d[1]]
		if fp&maskL == 0 {
			return end - len(d) + 1
		}
		d = d[2:]
	}
	return n
}
