package main

import (
	"bytes"
	"fmt"
	"os"
	"sort"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/delta"
)

type ck struct {
	off  uint64
	size uint32
	id   chunk.ID
}

func cut(b []byte) (out []ck) {
	c, _ := chunk.NewChunker(bytes.NewReader(b), chunk.DefaultParams())
	var off uint64
	for {
		raw, err := c.Next()
		if err != nil {
			break
		}
		out = append(out, ck{off, uint32(len(raw)), chunk.Sum(raw)})
		off += uint64(len(raw))
	}
	return
}

func main() {
	old, _ := os.ReadFile(os.Args[1])
	nw, _ := os.ReadFile(os.Args[2])
	bc := cut(old)
	nc := cut(nw)
	where := map[chunk.ID]uint64{}
	l := delta.Layout{NarSize: uint64(len(old))}
	for _, c := range bc {
		if _, ok := where[c.id]; !ok {
			where[c.id] = c.off
		}
		l.Offsets = append(l.Offsets, c.off)
		l.Sizes = append(l.Sizes, c.size)
	}
	// anchors in new NAR: shared chunks
	type anc struct{ n, b uint64 }
	var starts, ends []anc
	for _, c := range nc {
		if b, ok := where[c.id]; ok {
			starts = append(starts, anc{c.off, b})
			ends = append(ends, anc{c.off + uint64(c.size), b + uint64(c.size)})
		}
	}
	dc := chunk.NewDeltaCodec(0, 1)
	codec, _ := chunk.NewCodec()
	tot := map[string]int{}
	enc := func(name string, raw []byte, idx []int, full int) {
		s, e := l.Offsets[idx[0]], l.Offsets[idx[len(idx)-1]]+uint64(l.Sizes[idx[len(idx)-1]])
		obj, _ := dc.EncodeDelta(nil, raw, old[s:e])
		d := len(obj)
		if !delta.Worth(d, full) {
			d = full
		}
		tot[name] += d
	}
	for k, c := range nc {
		if _, ok := where[c.id]; ok {
			continue
		}
		if k%int(1) != 0 {
			continue
		}
		raw := nw[c.off : c.off+uint64(c.size)]
		full := len(codec.Encode(nil, raw))
		tot["full"] += full
		enc("global", raw, l.Around(uint64(len(nw)), c.off, c.size, 3), full)
		mid := c.off + uint64(c.size)/2
		// previous anchor end, next anchor start
		i := sort.Search(len(ends), func(j int) bool { return ends[j].n > mid }) - 1
		j := sort.Search(len(starts), func(j int) bool { return starts[j].n > mid })
		pa := anc{0, 0}
		if i >= 0 {
			pa = ends[i]
		}
		if i < 0 {
			enc("shiftg", raw, l.Around(uint64(len(nw)), c.off, c.size, 3), full)
		} else {
			enc("shiftg", raw, l.Around(l.NarSize, min(pa.b+(mid-pa.n), l.NarSize-1), 0, 3), full)
		}
		na := anc{uint64(len(nw)), uint64(len(old))}
		if j < len(starts) {
			na = starts[j]
		}
		shift := pa.b + (mid - pa.n)
		interp := shift
		if na.b > pa.b && na.n > pa.n {
			interp = pa.b + uint64(float64(mid-pa.n)*float64(na.b-pa.b)/float64(na.n-pa.n))
		}
		interp = min(interp, uint64(len(old))-1)
		shift = min(shift, uint64(len(old))-1)
		enc("interp", raw, l.Around(l.NarSize, interp, 0, 3), full)
		enc("shift", raw, l.Around(l.NarSize, shift, 0, 3), full)
	}
	fmt.Println(tot)
}
