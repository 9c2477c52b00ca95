package nixtest

import (
	"bytes"
	"compress/flate"
	"math/rand/v2"
	"testing"
)

func TestPackageVersionDeterministic(t *testing.T) {
	a := PackageVersion(7, 3, 64<<10)
	b := PackageVersion(7, 3, 64<<10)
	if len(a) != 3 {
		t.Fatalf("got %d files, want 3", len(a))
	}
	for name, data := range a {
		if !bytes.Equal(data, b[name]) {
			t.Errorf("%s differs between two calls with the same arguments", name)
		}
	}
	other := PackageVersion(8, 3, 64<<10)
	if bytes.Equal(a["lib/libdemo.so"], other["lib/libdemo.so"]) {
		t.Error("seeds 7 and 8 gave the same binary")
	}
}

func TestPackageVersionConsecutiveShareMost(t *testing.T) {
	const size = 1 << 20
	tests := []struct {
		seed     int64
		from, to int
	}{
		{1, 0, 1},
		{1, 1, 2},
		{42, 4, 5},
	}
	for _, tt := range tests {
		older := PackageVersion(tt.seed, tt.from, size)
		newer := PackageVersion(tt.seed, tt.to, size)
		for name := range older {
			if bytes.Equal(older[name], newer[name]) {
				t.Errorf("seed %d: %s is the same in versions %d and %d", tt.seed, name, tt.from, tt.to)
			}
		}
		ob, nb := older["lib/libdemo.so"], newer["lib/libdemo.so"]
		if len(ob) < size*99/100 || len(ob) > size*102/100 {
			t.Errorf("seed %d version %d: binary is %d bytes, want about %d", tt.seed, tt.from, len(ob), size)
		}
		if len(nb) == len(ob) {
			t.Errorf("seed %d: versions %d and %d have the same binary length; inserts must shift offsets", tt.seed, tt.from, tt.to)
		}
		shared := sharedChunkBytes(ob, nb)
		if frac := float64(shared) / float64(len(nb)); frac < 0.80 || frac >= 1 {
			t.Errorf("seed %d: %.1f%% of version %d's binary is in chunks of version %d, want 80%% to <100%%",
				tt.seed, 100*frac, tt.to, tt.from)
		}
		t.Logf("seed %d, %d -> %d: %d of %d bytes in shared chunks", tt.seed, tt.from, tt.to, shared, len(nb))
		// Fixed-size blocks must lose most of the sharing: that is what makes the
		// data a test of content-defined chunking.
		fixed := sharedFixedBlocks(ob, nb, 4096)
		t.Logf("seed %d, %d -> %d: %d bytes in equal fixed 4 KiB blocks", tt.seed, tt.from, tt.to, fixed)
		if float64(fixed) > 0.5*float64(shared) {
			t.Errorf("seed %d: fixed 4 KiB blocks share %d bytes, content-defined chunks %d; inserts should break fixed blocks", tt.seed, fixed, shared)
		}
	}
}

func TestPackageVersionCompressesPartly(t *testing.T) {
	bin := PackageVersion(3, 0, 512<<10)["lib/libdemo.so"]
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(bin); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if ratio := float64(buf.Len()) / float64(len(bin)); ratio < 0.3 || ratio > 0.9 {
		t.Errorf("deflate ratio %.2f, want between 0.3 and 0.9 (like a real binary)", ratio)
	}
}

func TestPackageVersionRejectsNegative(t *testing.T) {
	for _, args := range [][2]int{{-1, 10}, {0, -1}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("PackageVersion(1, %d, %d) did not panic", args[0], args[1])
				}
			}()
			PackageVersion(1, args[0], args[1])
		}()
	}
}

// gearChunks cuts data with a small gear-hash content-defined chunker (average about
// 4 KiB), independent of shoal's own chunker so the generator is tested on its own.
func gearChunks(data []byte) [][]byte {
	var gear [256]uint64
	r := rand.New(rand.NewPCG(1, 2))
	for i := range gear {
		gear[i] = r.Uint64()
	}
	const minSize, mask = 1024, 1<<12 - 1
	var chunks [][]byte
	var h uint64
	start := 0
	for i, c := range data {
		h = h<<1 + gear[c]
		if i+1-start >= minSize && h&mask == 0 {
			chunks = append(chunks, data[start:i+1])
			start, h = i+1, 0
		}
	}
	if start < len(data) {
		chunks = append(chunks, data[start:])
	}
	return chunks
}

// sharedChunkBytes is how many bytes of newer lie in chunks that also occur in older.
func sharedChunkBytes(older, newer []byte) int {
	seen := map[string]bool{}
	for _, c := range gearChunks(older) {
		seen[string(c)] = true
	}
	n := 0
	for _, c := range gearChunks(newer) {
		if seen[string(c)] {
			n += len(c)
		}
	}
	return n
}

// sharedFixedBlocks is how many bytes of newer lie in aligned blocks equal to
// older's block at the same offset.
func sharedFixedBlocks(older, newer []byte, block int) int {
	n := 0
	for at := 0; at+block <= len(older) && at+block <= len(newer); at += block {
		if bytes.Equal(older[at:at+block], newer[at:at+block]) {
			n += block
		}
	}
	return n
}
