package chunk

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/internal/testkit"
)

// revision returns base with a few scattered edits and a shifted tail, the
// way a rebuilt binary differs from its predecessor.
func revision(base []byte, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	out := bytes.Clone(base)
	for range 20 {
		out[r.IntN(len(out))] ^= 0x5a
	}
	at := r.IntN(len(out))
	return append(out[:at:at], append([]byte("inserted"), out[at:]...)...)
}

func TestDeltaRoundTrip(t *testing.T) {
	base := testkit.RandomBytes(3, 192<<10)
	target := revision(base, 4)[:64<<10]
	c := NewDeltaCodec(0, 2)
	defer c.Close()
	plain, err := NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()

	obj, err := c.EncodeDelta(nil, target, base)
	if err != nil {
		t.Fatal(err)
	}
	if full := plain.Encode(nil, target); len(obj)*10 > len(full) {
		t.Errorf("delta is %d bytes, full object %d: the dictionary was not used", len(obj), len(full))
	}
	for range 3 { // reused decoders must be re-armed with each dictionary
		got, err := c.OpenDelta([]byte("prefix"), Sum(target), obj, base, len(target))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[6:], target) || string(got[:6]) != "prefix" {
			t.Fatal("decoded delta differs from the chunk")
		}
	}
}

func TestOpenDeltaRejects(t *testing.T) {
	base := testkit.RandomBytes(5, 128<<10)
	target := revision(base, 6)[:50000]
	c := NewDeltaCodec(0, 1)
	defer c.Close()
	obj, err := c.EncodeDelta(nil, target, base)
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := NewCodec()
	defer plain.Close()
	tests := []struct {
		name    string
		obj     []byte
		dict    []byte
		maxSize int
		corrupt bool   // want ErrCorrupt
		want    string // else an error mentioning this
	}{
		{"other dictionary", obj, testkit.RandomBytes(7, 128<<10), len(target), false, "CRC"}, // the frame checksum catches it before the ID does
		{"no dictionary", obj, nil, len(target), false, "dictionary"},
		{"dictionary too large", obj, make([]byte, MaxDictSize+1), len(target), false, "dictionary"},
		{"declared size above limit", obj, base, len(target) - 1, false, "exceeds"},
		{"truncated", obj[:len(obj)-5], base, len(target), false, ""},
		{"garbage", []byte("not a zstd frame at all"), base, len(target), false, ""},
		{"full object of another chunk", plain.Encode(nil, base[:1000]), base, len(target), true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.OpenDelta(nil, Sum(target), tt.obj, tt.dict, tt.maxSize)
			if err == nil || got != nil {
				t.Fatalf("OpenDelta = %d bytes, %v; want an error", len(got), err)
			}
			if errors.Is(err, ErrCorrupt) != tt.corrupt || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("OpenDelta error %v: corrupt=%v want %v, want mention of %q", err, errors.Is(err, ErrCorrupt), tt.corrupt, tt.want)
			}
		})
	}
	if _, err := c.EncodeDelta(nil, make([]byte, MaxDeltaChunk+1), base); err == nil {
		t.Error("EncodeDelta accepted a chunk above MaxDeltaChunk")
	}
}

func TestDeltaIDDependsOnBasesAndOrder(t *testing.T) {
	a, b, x := Sum([]byte("a")), Sum([]byte("b")), Sum([]byte("x"))
	ids := map[ID]string{}
	for name, bases := range map[string][]ID{"none": nil, "a": {a}, "ab": {a, b}, "ba": {b, a}} {
		id := DeltaID(x, bases)
		if other, dup := ids[id]; dup {
			t.Fatalf("DeltaID(%s) == DeltaID(%s)", name, other)
		}
		ids[id] = name
	}
	if DeltaID(x, []ID{a}) == DeltaID(a, []ID{x}) {
		t.Fatal("DeltaID does not tell target from base")
	}
}

// A delta object is a standard zstd frame with a raw dictionary: the
// reference zstd decoder rebuilds the chunk from it, so any implementation
// can read a store.
func TestDeltaDecodesWithReferenceZstd(t *testing.T) {
	zstdBin, err := exec.LookPath("zstd")
	if err != nil {
		if os.Getenv("SHOAL_E2E") != "" {
			t.Fatal("zstd not on PATH (./test.sh installs it)")
		}
		t.Skip("zstd not on PATH; set SHOAL_E2E=1 to require it")
	}
	base := testkit.RandomBytes(8, 256<<10)
	target := revision(base, 9)[:200<<10]
	c := NewDeltaCodec(0, 1)
	defer c.Close()
	obj, err := c.EncodeDelta(nil, target, base)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dict, in := filepath.Join(dir, "dict"), filepath.Join(dir, "delta.zst")
	if err := os.WriteFile(dict, base, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in, obj, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(zstdBin, "-q", "-d", "-c", "--long=27", "-D", dict, in).Output()
	if err != nil {
		t.Fatalf("zstd -d -D: %v", err)
	}
	if !bytes.Equal(out, target) {
		t.Fatalf("zstd decoded %d bytes that differ from the %d-byte chunk", len(out), len(target))
	}
}
