package main

import (
	"bytes"
	"fmt"
	"os"
	"sort"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/delta"
)

func cut(b []byte) (offs []uint64, sizes []uint32, ids []chunk.ID) {
	c, _ := chunk.NewChunker(bytes.NewReader(b), chunk.DefaultParams())
	var off uint64
	for {
		raw, err := c.Next()
		if err != nil {
			break
		}
		offs = append(offs, off)
		sizes = append(sizes, uint32(len(raw)))
		ids = append(ids, chunk.Sum(raw))
		off += uint64(len(raw))
	}
	return
}

func main() {
	old, _ := os.ReadFile(os.Args[1])
	nw, _ := os.ReadFile(os.Args[2])
	bo, bs, bids := cut(old)
	have := map[chunk.ID]bool{}
	for _, id := range bids {
		have[id] = true
	}
	l := delta.Layout{NarSize: uint64(len(old)), Offsets: bo, Sizes: bs}
	no, ns, nids := cut(nw)
	dc := chunk.NewDeltaCodec(0, 1)
	dcs := map[string]*chunk.DeltaCodec{"better": chunk.NewDeltaCodec(zstd.SpeedBetterCompression, 1), "best": chunk.NewDeltaCodec(zstd.SpeedBestCompression, 1), "fastest": chunk.NewDeltaCodec(zstd.SpeedFastest, 1)}
	codec, _ := chunk.NewCodec()
	tot := map[string]int{}
	type row struct{ full, d3, dbig int }
	var rows []row
	for i, id := range nids {
		if have[id] {
			continue
		}
		raw := nw[no[i] : no[i]+uint64(ns[i])]
		full := len(codec.Encode(nil, raw))
		r := row{full: full}
		for _, n := range []int{3, 8} {
			idx := l.Around(uint64(len(nw)), no[i], ns[i], n)
			s, e := bo[idx[0]], bo[idx[len(idx)-1]]+uint64(bs[idx[len(idx)-1]])
			obj, _ := dc.EncodeDelta(nil, raw, old[s:e])
			d := min(len(obj), full)
			tot[fmt.Sprint(n)] += d
			if n == 3 {
				r.d3 = d
			}
		}
		for name, c := range dcs {
			for _, n := range []int{2, 3, 4} {
			idx := l.Around(uint64(len(nw)), no[i], ns[i], n)
			s, e := bo[idx[0]], bo[idx[len(idx)-1]]+uint64(bs[idx[len(idx)-1]])
			obj, _ := c.EncodeDelta(nil, raw, old[s:e])
			tot[fmt.Sprint(name, n)] += min(len(obj), full)
			}
		}
		// 4 MiB around
		mid := int(float64(no[i]) * float64(len(old)) / float64(len(nw)))
		s := max(0, mid-2<<20)
		e := min(len(old), s+4<<20)
		obj, _ := dc.EncodeDelta(nil, raw, old[s:e])
		r.dbig = min(len(obj), full)
		tot["4M"] += r.dbig
		tot["full"] += full
		rows = append(rows, r)
	}
	fmt.Println(len(rows), tot)
	sort.Slice(rows, func(a, b int) bool { return rows[a].d3-rows[a].dbig > rows[b].d3-rows[b].dbig })
	for _, r := range rows[:min(10, len(rows))] {
		fmt.Println(r)
	}
}
