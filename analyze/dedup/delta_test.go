package dedup

import (
	"bytes"
	"context"
	"encoding/csv"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/chunk"
)

// edited is data with a byte changed every stride bytes: every chunk is new, and
// nearly the same as the one at the same place in data.
func edited(data []byte, seed byte, stride int) []byte {
	out := bytes.Clone(data)
	for i := stride / 2; i < len(out); i += stride {
		out[i] ^= seed
	}
	return out
}

func TestRunDeltas(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	v10 := make([]byte, 200<<10)
	for i := range v10 {
		v10[i] = byte(rng.Uint32())
	}
	other := edited(v10, 0x55, 7) // another package: never a base
	v11 := edited(v10, 1, 3000)
	v12 := edited(v11, 2, 2000)
	h := func(c string) string { return "/nix/store/" + strings.Repeat(c, 32) + "-" }
	// Given out of version order: the base is still the previous version.
	sources := []Source{
		memSource(h("a")+"other-1.0", other, 150_000),
		memSource(h("b")+"pkg-1.2", v12, 160_000),
		memSource(h("c")+"pkg-1.0", v10, 170_000),
		memSource(h("d")+"pkg-1.1", v11, 180_000),
	}
	params := chunk.Params{Min: 2 << 10, Avg: 8 << 10, Max: 32 << 10}
	res, err := Run(context.Background(), sources, Options{
		Configs: []Config{{WholeNAR, params}, {WholeNAR, chunk.Params{Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}}},
		Levels:  []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault},
		Deltas:  true, TempDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.HasDeltas() {
		t.Fatal("no deltas measured")
	}
	c := &res.Configs[0]
	for i, want := range []int{-1, 3, -1, 2} {
		if got := c.Deltas[i].Base; got != want {
			t.Errorf("%s: base %d, want %d", sources[i].Name, got, want)
		}
	}
	for _, i := range []int{1, 3} {
		d := c.Deltas[i]
		if d.NewChunks == 0 || d.Deltas < d.NewChunks/2 {
			t.Errorf("%s: %d deltas for %d new chunks", sources[i].Name, d.Deltas, d.NewChunks)
		}
		for l := range res.Levels {
			if d.Stored[l]*10 > d.NewStored[l] {
				t.Errorf("%s level %d: %d bytes with deltas, %d without; want a tenth at most", sources[i].Name, l, d.Stored[l], d.NewStored[l])
			}
		}
	}
	// pkg-1.1 read after other and pkg-1.0 (and pkg-1.2, which shares no chunk with
	// it): its new chunks against all earlier NARs are those against its base.
	if c.Deltas[3].NewChunks != c.PerNAR[3].NewChunks || c.Deltas[3].NewStored[1] != c.PerNAR[3].NewStored[1] {
		t.Errorf("pkg-1.1: %d new chunks (%d bytes) against its base, %d (%d bytes) against everything before",
			c.Deltas[3].NewChunks, c.Deltas[3].NewStored[1], c.PerNAR[3].NewChunks, c.PerNAR[3].NewStored[1])
	}
	chunks, deltas, src, ok := res.DeltaUpgrades(c, 1)
	if !ok || src != 340_000 || deltas >= chunks {
		t.Errorf("DeltaUpgrades = %d, %d, %d, %v", chunks, deltas, src, ok)
	}

	var buf bytes.Buffer
	if err := res.WriteTable(&buf, 1); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "upgrades from the previous version of the same package (2 NARs have one)") {
		t.Errorf("table lacks the delta section:\n%s", buf.String())
	}
	buf.Reset()
	if err := res.WriteNARsCSV(&buf); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	withBase := 0
	for _, row := range rows[1:] {
		if row[col["base_index"]] != "" {
			withBase++
			if row[col["delta_upgrade_bytes"]] == "" || row[col["deltas"]] == "0" {
				t.Errorf("row %v lacks delta figures", row)
			}
		}
	}
	if withBase != 2*2*2 { // 2 NARs × 2 configurations × 2 levels
		t.Errorf("%d CSV rows with a base, want 8", withBase)
	}
	buf.Reset()
	if err := res.WriteSVG(&buf, 1); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "with deltas:") {
		t.Error("SVG lacks the delta series")
	}
}

func TestVersionBases(t *testing.T) {
	names := []string{"go-1.25.10", "go-1.25.2", "go-1.25.3-doc", "go-1.25.1-doc", "go-1.26rc1", "hello-2.12", "go-1.25.2"}
	var sources []Source
	for i, n := range names {
		sources = append(sources, Source{Name: "/nix/store/" + strings.Repeat(string(rune('a'+i)), 32) + "-" + n})
	}
	got := versionBases(sources)
	// go-1.25.2 twice: the second is a rebuild of the first, and go-1.25.10 takes
	// the one with the smaller store path.
	want := []int{1, -1, 3, -1, 0, -1, 1}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%s: base %d, want %d", names[i], got[i], want[i])
		}
	}
}
