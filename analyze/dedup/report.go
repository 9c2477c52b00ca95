package dedup

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"math/bits"
	"strconv"
	"text/tabwriter"
)

// SourceFileSize is the total compressed size of the NARs in the source cache
// and whether every NAR had one; a partial sum is not comparable.
func (r *Result) SourceFileSize() (uint64, bool) {
	var sum uint64
	for _, n := range r.NARs {
		if n.FileSize == 0 {
			return 0, false
		}
		sum += n.FileSize
	}
	return sum, true
}

// NarBytes is the total uncompressed size of the NARs.
func (r *Result) NarBytes() uint64 {
	var sum uint64
	for _, n := range r.NARs {
		sum += n.NarSize
	}
	return sum
}

// SourceUpgrade is what the source cache charges for every NAR after the
// first: their compressed sizes, since a plain cache sends each NAR whole.
func (r *Result) SourceUpgrade() (uint64, bool) {
	var sum uint64
	for _, n := range r.NARs[1:] {
		if n.FileSize == 0 {
			return 0, false
		}
		sum += n.FileSize
	}
	return sum, len(r.NARs) > 1
}

// Upgrades is the sum of Upgrade over every NAR after the first at level
// index l: what following the whole series costs a client that had the first.
func (c *ConfigResult) Upgrades(l int) uint64 {
	var sum uint64
	for i := 1; i < len(c.PerNAR); i++ {
		sum += c.Upgrade(i, l)
	}
	return sum
}

// Quantile returns the q-quantile (0..1) of the distinct chunks' sizes, by the
// nearest-rank method.
func (c *ConfigResult) Quantile(q float64) uint32 {
	if len(c.Sizes) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(c.Sizes)))) - 1
	return c.Sizes[min(max(i, 0), len(c.Sizes)-1)]
}

// MeanSize is the mean size of the distinct chunks.
func (c *ConfigResult) MeanSize() float64 {
	if c.UniqueChunks == 0 {
		return 0
	}
	return float64(c.UniqueBytes) / float64(c.UniqueChunks)
}

// WriteTable prints one line per configuration: chunk counts and sizes, the
// stored bytes at every level, and at level index l the manifests, the total,
// the upgrade bytes and both compared with the source cache.
func (r *Result) WriteTable(w io.Writer, l int) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	src, haveSrc := r.SourceFileSize()
	srcUp, haveSrcUp := r.SourceUpgrade()
	fmt.Fprintf(tw, "%d NARs, %s MB uncompressed", len(r.NARs), mb(r.NarBytes()))
	if haveSrc {
		fmt.Fprintf(tw, ", %s MB in the source cache (upgrades after the first: %s MB)", mb(src), mb(srcUp))
	}
	fmt.Fprintf(tw, "; sizes in MB (10^6 bytes); total, upgrade and ratios at zstd %s\n", r.Levels[l])
	fmt.Fprint(tw, "strategy\tmin/avg/max\tchunks\tunique\tmean\tp50\tunique MB\t")
	for _, lv := range r.Levels {
		fmt.Fprintf(tw, "%s\t", lv)
	}
	fmt.Fprint(tw, "manifests\ttotal\t/source\tupgrades\t/source\t\n")
	for i := range r.Configs {
		c := &r.Configs[i]
		fmt.Fprintf(tw, "%s\t%s/%s/%s\t%d\t%d\t%.0f\t%d\t%s\t", c.Strategy, FormatSize(c.Params.Min), FormatSize(c.Params.Avg), FormatSize(c.Params.Max),
			c.Chunks, c.UniqueChunks, c.MeanSize(), c.Quantile(0.5), mb(c.UniqueBytes))
		for j := range r.Levels {
			fmt.Fprintf(tw, "%s\t", mb(c.Stored[j]))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", mb(c.Manifests[l]), mb(c.Total(l)), ratio(c.Total(l), src, haveSrc),
			mb(c.Upgrades(l)), ratio(c.Upgrades(l), srcUp, haveSrcUp))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.HasDeltas() {
		return r.writeDeltaTable(w, l)
	}
	return nil
}

// writeDeltaTable prints, per configuration, what the NARs with an earlier version
// cost a client upgrading from that version: their new chunks as full objects, with
// deltas, and the source cache's compressed NARs.
func (r *Result) writeDeltaTable(w io.Writer, l int) error {
	upgrades := 0
	for _, d := range r.Configs[0].Deltas {
		if d.Base >= 0 {
			upgrades++
		}
	}
	fmt.Fprintf(w, "\nupgrades from the previous version of the same package (%d NARs have one), at zstd %s:\n", upgrades, r.Levels[l])
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "strategy\tmin/avg/max\tnew chunks\tdeltas\tchunks MB\tdeltas MB\tsource MB\tchunks/source\tdeltas/source\tdeltas/chunks\t\n")
	for i := range r.Configs {
		c := &r.Configs[i]
		var nNew, nDeltas uint64
		for _, d := range c.Deltas {
			nNew += d.NewChunks
			nDeltas += d.Deltas
		}
		chunks, deltas, src, ok := r.DeltaUpgrades(c, l)
		fmt.Fprintf(tw, "%s\t%s/%s/%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", c.Strategy, FormatSize(c.Params.Min), FormatSize(c.Params.Avg), FormatSize(c.Params.Max),
			nNew, nDeltas, mb3(chunks), mb3(deltas), optionalMB(src, ok), ratio(chunks, src, ok), ratio(deltas, src, ok), ratio(deltas, chunks, true))
	}
	return tw.Flush()
}

func optionalMB(n uint64, ok bool) string {
	if !ok {
		return "-"
	}
	return mb3(n)
}

// mb3 prints megabytes to the kilobyte: deltas of small upgrades are a few of them.
func mb3(n uint64) string { return strconv.FormatFloat(float64(n)/1e6, 'f', 3, 64) }

func mb(n uint64) string { return strconv.FormatFloat(float64(n)/1e6, 'f', 1, 64) }

func ratio(a, b uint64, ok bool) string {
	if !ok || b == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(a)/float64(b), 'f', 3, 64)
}

// WriteSummaryCSV writes one row per configuration and level.
func (r *Result) WriteSummaryCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	src, haveSrc := r.SourceFileSize()
	srcUp, haveSrcUp := r.SourceUpgrade()
	_ = cw.Write([]string{"strategy", "min", "avg", "max", "level", "nars", "nar_bytes", "source_bytes",
		"chunks", "unique_chunks", "unique_bytes", "stored_bytes", "manifest_bytes", "total_bytes",
		"upgrade_bytes", "source_upgrade_bytes", "mean_chunk", "p10_chunk", "p50_chunk", "p90_chunk"})
	for i := range r.Configs {
		c := &r.Configs[i]
		for l, lv := range r.Levels {
			_ = cw.Write([]string{string(c.Strategy), itoa(c.Params.Min), itoa(c.Params.Avg), itoa(c.Params.Max), lv.String(),
				itoa(len(r.NARs)), utoa(r.NarBytes()), optional(src, haveSrc),
				utoa(c.Chunks), utoa(c.UniqueChunks), utoa(c.UniqueBytes), utoa(c.Stored[l]), utoa(c.Manifests[l]), utoa(c.Total(l)),
				utoa(c.Upgrades(l)), optional(srcUp, haveSrcUp), strconv.FormatFloat(c.MeanSize(), 'f', 0, 64),
				utoa(uint64(c.Quantile(0.1))), utoa(uint64(c.Quantile(0.5))), utoa(uint64(c.Quantile(0.9)))})
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("writing summary CSV: %w", err)
	}
	return nil
}

// WriteNARsCSV writes one row per configuration, level and NAR: what each NAR
// adds to those before it.
func (r *Result) WriteNARsCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	// The delta columns, last so readers of the older layout keep working, are empty
	// unless deltas were measured and the NAR has an earlier version.
	_ = cw.Write([]string{"strategy", "min", "avg", "max", "level", "index", "nar", "nar_bytes", "source_bytes",
		"chunks", "new_chunks", "new_bytes", "new_stored_bytes", "manifest_bytes", "upgrade_bytes",
		"base_index", "base_new_chunks", "base_new_stored_bytes", "deltas", "delta_upgrade_bytes"})
	for i := range r.Configs {
		c := &r.Configs[i]
		for l, lv := range r.Levels {
			for n, p := range c.PerNAR {
				nar := r.NARs[n]
				row := []string{string(c.Strategy), itoa(c.Params.Min), itoa(c.Params.Avg), itoa(c.Params.Max), lv.String(),
					itoa(n), nar.Name, utoa(nar.NarSize), optional(nar.FileSize, nar.FileSize > 0),
					utoa(p.Chunks), utoa(p.NewChunks), utoa(p.NewBytes), utoa(p.NewStored[l]), utoa(p.Manifest[l]), utoa(c.Upgrade(n, l))}
				if c.Deltas != nil && c.Deltas[n].Base >= 0 {
					d := c.Deltas[n]
					row = append(row, itoa(d.Base), utoa(d.NewChunks), utoa(d.NewStored[l]), utoa(d.Deltas), utoa(d.Stored[l]))
				} else {
					row = append(row, "", "", "", "", "")
				}
				_ = cw.Write(row)
			}
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("writing per-NAR CSV: %w", err)
	}
	return nil
}

// WriteSizesCSV writes the size distribution of each configuration's distinct
// chunks in power-of-two buckets [lo, hi).
func (r *Result) WriteSizesCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"strategy", "min", "avg", "max", "bucket_lo", "bucket_hi", "chunks", "bytes"})
	for i := range r.Configs {
		c := &r.Configs[i]
		for _, b := range c.Histogram() {
			_ = cw.Write([]string{string(c.Strategy), itoa(c.Params.Min), itoa(c.Params.Avg), itoa(c.Params.Max),
				utoa(b.Lo), utoa(b.Hi), utoa(b.Chunks), utoa(b.Bytes)})
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("writing size CSV: %w", err)
	}
	return nil
}

// Bucket is one bar of a size histogram: chunks with Lo <= size < Hi.
type Bucket struct{ Lo, Hi, Chunks, Bytes uint64 }

// Histogram buckets the distinct chunks' sizes by powers of two, skipping
// empty buckets.
func (c *ConfigResult) Histogram() []Bucket {
	var out []Bucket
	for _, s := range c.Sizes {
		lo := uint64(1) << (bits.Len32(s) - 1)
		if len(out) == 0 || out[len(out)-1].Lo != lo {
			out = append(out, Bucket{Lo: lo, Hi: 2 * lo})
		}
		out[len(out)-1].Chunks++
		out[len(out)-1].Bytes += uint64(s)
	}
	return out
}

func itoa(n int) string    { return strconv.Itoa(n) }
func utoa(n uint64) string { return strconv.FormatUint(n, 10) }

func optional(n uint64, ok bool) string {
	if !ok {
		return ""
	}
	return utoa(n)
}
