package fetch

import (
	"bytes"
	"slices"
	"testing"
)

// TestProgressHandOff: assembly's checked chunks are kept for a streaming response
// only while one streams, within handOffBytes, for the generation being streamed, and
// each is taken once; whatever is not kept the response reads from the cache.
func TestProgressHandOff(t *testing.T) {
	chunk := func(n int) []byte { return bytes.Repeat([]byte{byte(n)}, n) }
	tests := []struct {
		name string
		run  func(p *Progress) (taken []bool)
		want []bool
	}{
		{"nobody streams", func(p *Progress) []bool {
			p.handOff(0, 0, chunk(10))
			_, ok := p.Take(0, 0)
			return []bool{ok}
		}, []bool{false}},
		{"taken once", func(p *Progress) []bool {
			defer p.Stream()()
			p.handOff(0, 0, chunk(10))
			raw, ok := p.Take(0, 0)
			_, again := p.Take(0, 0)
			return []bool{ok && bytes.Equal(raw, chunk(10)), again}
		}, []bool{true, false}},
		{"another generation", func(p *Progress) []bool {
			defer p.Stream()()
			p.handOff(0, 0, chunk(10))
			gen := p.restart()
			_, old := p.Take(0, 0)
			p.handOff(0, 1, chunk(10)) // assembly of the old generation, still running
			_, stale := p.Take(gen, 1)
			return []bool{old, stale}
		}, []bool{false, false}},
		{"within the bound", func(p *Progress) []bool {
			defer p.Stream()()
			p.handOff(0, 0, chunk(handOffBytes/2))
			p.handOff(0, 1, chunk(handOffBytes/2))
			p.handOff(0, 2, chunk(1)) // over
			_, a := p.Take(0, 0)
			p.handOff(0, 3, chunk(1)) // room again
			_, b := p.Take(0, 1)
			_, c := p.Take(0, 2)
			_, d := p.Take(0, 3)
			return []bool{a, b, c, d}
		}, []bool{true, true, false, true}},
		{"let go when the last streamer ends", func(p *Progress) []bool {
			done := p.Stream()
			p.handOff(0, 0, chunk(10))
			done()
			_, ok := p.Take(0, 0)
			return []bool{ok, p.handedBytes != 0}
		}, []bool{false, false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.run(newProgress("nar", nil))
			if !slices.Equal(got, tc.want) {
				t.Fatalf("taken %v, want %v", got, tc.want)
			}
		})
	}
}
