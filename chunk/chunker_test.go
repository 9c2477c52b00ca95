package chunk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
	"testing/iotest"
)

var smallParams = Params{Min: 64, Avg: 256, Max: 1024}

// chunkAll cuts everything r yields and returns copies of the chunks.
func chunkAll(t testing.TB, r io.Reader, p Params) [][]byte {
	t.Helper()
	c, err := NewChunker(r, p)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for {
		b, err := c.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		out = append(out, bytes.Clone(b))
	}
}

func lengths(chunks [][]byte) []int {
	out := make([]int, len(chunks))
	for i, c := range chunks {
		out[i] = len(c)
	}
	return out
}

func TestChunkerMatchesOneByteReference(t *testing.T) {
	params := []Params{
		DefaultParams(),
		smallParams,
		{Min: 65, Avg: 128, Max: 1023},                  // odd Min and Max, smallest Avg
		{Min: 4095, Avg: 16384, Max: 65535},             // odd bounds at realistic sizes
		{Min: 2048, Avg: 8192, Max: 8193},               // Max barely above Avg
		{Min: 1 << 20, Avg: 8 << 20, Max: MaxChunkSize}, // largest Avg
	}
	inputs := map[string][]byte{
		"random":      randomInput(3<<20 + 5),
		"low-entropy": lowEntropyInput(3<<20 + 3),
		"zeros":       make([]byte, 100_001),
	}
	for _, p := range params {
		for name, in := range inputs {
			t.Run(p.Identity()+"/"+name, func(t *testing.T) {
				got := lengths(chunkAll(t, bytes.NewReader(in), p))
				want := lengths(referenceChunks(in, p))
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("cut lengths differ from the one-byte reference:\n got %v\nwant %v", got, want)
				}
			})
		}
	}
}

func TestChunkerProperties(t *testing.T) {
	inputs := map[string][]byte{
		"random":      randomInput(1<<20 + 17),
		"low-entropy": lowEntropyInput(1<<20 + 1),
	}
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one-byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data-err": iotest.DataErrReader,
		"odd-size": func(r io.Reader) io.Reader { return &oddReader{r: r} },
	}
	for _, p := range []Params{DefaultParams(), smallParams, {Min: 333, Avg: 1024, Max: 3001}} {
		for name, in := range inputs {
			want := lengths(referenceChunks(in, p))
			for rname, wrap := range readers {
				t.Run(fmt.Sprintf("%s/%s/%s", p.Identity(), name, rname), func(t *testing.T) {
					chunks := chunkAll(t, wrap(bytes.NewReader(in)), p)
					if got := bytes.Join(chunks, nil); !bytes.Equal(got, in) {
						t.Fatalf("chunks do not concatenate to the input (%d vs %d bytes)", len(got), len(in))
					}
					for i, c := range chunks {
						last := i == len(chunks)-1
						if len(c) > p.Max || len(c) == 0 || (!last && len(c) < p.SmallestCut()) {
							t.Fatalf("chunk %d of %d has length %d outside [%d, %d]", i, len(chunks), len(c), p.SmallestCut(), p.Max)
						}
					}
					if got := lengths(chunks); fmt.Sprint(got) != fmt.Sprint(want) {
						t.Fatalf("cut points depend on read sizes:\n got %v\nwant %v", got, want)
					}
				})
			}
		}
	}
}

// oddReader returns reads of varying odd sizes to misalign every refill.
type oddReader struct {
	r io.Reader
	n int
}

func (o *oddReader) Read(p []byte) (int, error) {
	o.n = (o.n*7 + 13) % 9973
	return o.r.Read(p[:min(len(p), o.n|1)])
}

func TestChunkerEdgeCases(t *testing.T) {
	p := DefaultParams()
	tests := []struct {
		name string
		in   []byte
		want []int
	}{
		{"empty", nil, nil},
		{"one byte", []byte{7}, []int{1}},
		{"exactly Min", randomInput(p.Min), []int{p.Min}},
		{"Min plus one", randomInput(p.Min + 1), lengths(referenceChunks(randomInput(p.Min+1), p))},
		{"zeros are cut at Max", make([]byte, 3*p.Max+5), []int{p.Max, p.Max, p.Max, 5}},
		{"zeros exactly Max", make([]byte, p.Max), []int{p.Max}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := lengths(chunkAll(t, bytes.NewReader(tt.in), p))
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("lengths = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestChunkerEOFIsSticky(t *testing.T) {
	c, err := NewChunker(bytes.NewReader([]byte("abc")), smallParams)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := c.Next(); err != nil || string(b) != "abc" {
		t.Fatalf("Next = %q, %v", b, err)
	}
	for range 3 {
		if _, err := c.Next(); err != io.EOF {
			t.Fatalf("Next after the last chunk = %v, want io.EOF", err)
		}
	}
}

func TestChunkerReadErrors(t *testing.T) {
	boom := errors.New("boom")
	in := randomInput(10 << 10)
	tests := []struct {
		name string
		r    io.Reader
		want error
	}{
		{"error at once", iotest.ErrReader(boom), boom},
		{"error after data", io.MultiReader(bytes.NewReader(in), iotest.ErrReader(boom)), boom},
		// A truncated decompressor reports io.ErrUnexpectedEOF; that must not
		// pass for the end of the stream.
		{"reader's own unexpected EOF", io.MultiReader(bytes.NewReader(in), iotest.ErrReader(io.ErrUnexpectedEOF)), io.ErrUnexpectedEOF},
		{"no progress", zeroReader{}, io.ErrNoProgress},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewChunker(tt.r, smallParams)
			if err != nil {
				t.Fatal(err)
			}
			var total int
			for {
				b, err := c.Next()
				if err == nil {
					total += len(b)
					continue
				}
				if err == io.EOF || !errors.Is(err, tt.want) {
					t.Fatalf("Next after %d bytes = %v, want an error wrapping %v", total, err, tt.want)
				}
				if _, again := c.Next(); !errors.Is(again, tt.want) {
					t.Fatalf("Next after the error = %v, want the same error again", again)
				}
				return
			}
		})
	}
}

// zeroReader never returns data and never fails.
type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestChunkerReset(t *testing.T) {
	a, b := randomInput(300<<10), lowEntropyInput(500<<10)
	c, err := NewChunker(bytes.NewReader(a), smallParams)
	if err != nil {
		t.Fatal(err)
	}
	// Stop part-way through a, then cut b with the same chunker.
	for range 10 {
		if _, err := c.Next(); err != nil {
			t.Fatal(err)
		}
	}
	c.Reset(bytes.NewReader(b))
	var got []int
	for {
		chunk, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, len(chunk))
	}
	if want := lengths(referenceChunks(b, smallParams)); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after Reset: lengths = %v, want %v", got, want)
	}
}

func TestChunkCannotGrowIntoBuffer(t *testing.T) {
	in := randomInput(8 << 10)
	c, err := NewChunker(bytes.NewReader(in), smallParams)
	if err != nil {
		t.Fatal(err)
	}
	first, err := c.Next()
	if err != nil {
		t.Fatal(err)
	}
	_ = append(first, 0xff)
	second, err := c.Next()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(second, in[len(first):len(first)+len(second)]) {
		t.Fatal("appending to a returned chunk overwrote the next one")
	}
}

func TestNewChunkerRejectsBadParams(t *testing.T) {
	if _, err := NewChunker(bytes.NewReader(nil), Params{Min: 64, Avg: 100, Max: 1024}); err == nil {
		t.Fatal("NewChunker accepted a non-power-of-two Avg")
	}
}

func BenchmarkChunker(b *testing.B) {
	for _, p := range []Params{DefaultParams(), smallParams} {
		b.Run(p.Identity(), func(b *testing.B) {
			in := randomInput(64 << 20)
			r := bytes.NewReader(in)
			c, err := NewChunker(r, p)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(in)))
			b.ResetTimer()
			for range b.N {
				r.Reset(in)
				c.Reset(r)
				for {
					if _, err := c.Next(); err != nil {
						if err != io.EOF {
							b.Fatal(err)
						}
						break
					}
				}
			}
		})
	}
}
