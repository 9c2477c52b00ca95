package chunk

import (
	"bytes"
	"testing"

	"github.com/shoal-nix/shoal/internal/testkit"
)

// FuzzDecode feeds arbitrary bytes to the chunk object decoder, as a store or a peer
// could send them. Decode must refuse or return at most maxSize bytes, and Open must
// never return bytes that do not hash to the ID it was asked for.
func FuzzDecode(f *testing.F) {
	c, err := NewCodec()
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(c.Close)
	for _, raw := range [][]byte{nil, []byte("a"), bytes.Repeat([]byte("shoal "), 1000), randomInput(70_000)} {
		f.Add(c.Encode(nil, raw), uint32(len(raw)))
	}
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd}, uint32(10))                        // magic alone
	f.Add([]byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}, uint32(1)) // skippable frame
	f.Fuzz(func(t *testing.T, obj []byte, limit uint32) {
		maxSize := int(limit % (2 * MaxChunkSize))
		out, err := c.Decode(nil, obj, maxSize)
		if err != nil {
			if out != nil {
				t.Fatalf("Decode returned %d bytes with error %v", len(out), err)
			}
			return
		}
		if len(out) > maxSize || len(out) > MaxChunkSize {
			t.Fatalf("Decode returned %d bytes, limit %d", len(out), maxSize)
		}
		// The decoded bytes open under their own ID, and under no other.
		id := Sum(out)
		if _, err := c.Open(nil, id, obj, maxSize); err != nil {
			t.Fatalf("Open under the content's own ID: %v", err)
		}
		wrong := id
		wrong[0] ^= 1
		if got, err := c.Open(nil, wrong, obj, maxSize); err == nil {
			t.Fatalf("Open accepted %d bytes under a wrong ID", len(got))
		}
		// Appending to a non-empty dst leaves the prefix alone.
		pre := []byte("prefix")
		out2, err := c.Decode(append([]byte(nil), pre...), obj, maxSize)
		if err != nil || !bytes.Equal(out2[:len(pre)], pre) || !bytes.Equal(out2[len(pre):], out) {
			t.Fatalf("Decode into a non-empty dst: err %v", err)
		}
	})
}

// FuzzParseID checks that a chunk ID has exactly one spelling: whatever parses prints
// back as the same string, so store keys cannot alias.
func FuzzParseID(f *testing.F) {
	f.Add(Sum([]byte("x")).String())
	f.Add("")
	f.Add("ABCDEF")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("ParseID(%q) prints back as %q", s, id.String())
		}
	})
}

// FuzzParseIdentity checks the chunker identity read from manifests and store metadata:
// whatever parses is valid and prints back exactly.
func FuzzParseIdentity(f *testing.F) {
	f.Add(DefaultParams().Identity())
	f.Add(Params{Min: 64, Avg: 256, Max: 1024}.Identity())
	f.Add("fastcdc2020-0-0-0")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseIdentity(s)
		if err != nil {
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("ParseIdentity(%q) accepted invalid params: %v", s, err)
		}
		if p.Identity() != s {
			t.Fatalf("ParseIdentity(%q) prints back as %q", s, p.Identity())
		}
	})
}

// FuzzOpenDelta feeds arbitrary delta objects, as a store or a lying peer could send
// them, against a fixed dictionary. decodeDelta must refuse or stay within maxSize,
// and OpenDelta must never return bytes that do not hash to the ID asked for.
func FuzzOpenDelta(f *testing.F) {
	c := NewDeltaCodec(0, 1)
	f.Cleanup(c.Close)
	dict := testkit.RandomBytes(11, 64<<10)
	for _, raw := range [][]byte{[]byte("a"), revision(dict, 12)[:40000], randomInput(5000)} {
		obj, err := c.EncodeDelta(nil, raw, dict)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(obj, uint32(len(raw)))
	}
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd}, uint32(10))
	f.Fuzz(func(t *testing.T, obj []byte, limit uint32) {
		maxSize := int(limit % (2 * MaxDeltaChunk))
		out, err := c.decodeDelta(nil, obj, dict, maxSize)
		if err != nil {
			if out != nil {
				t.Fatalf("decodeDelta returned %d bytes with error %v", len(out), err)
			}
			return
		}
		if len(out) > maxSize {
			t.Fatalf("decodeDelta returned %d bytes, limit %d", len(out), maxSize)
		}
		id := Sum(out)
		if _, err := c.OpenDelta(nil, id, obj, dict, maxSize); err != nil {
			t.Fatalf("OpenDelta under the content's own ID: %v", err)
		}
		wrong := id
		wrong[0] ^= 1
		if got, err := c.OpenDelta(nil, wrong, obj, dict, maxSize); err == nil {
			t.Fatalf("OpenDelta accepted %d bytes under a wrong ID", len(got))
		}
	})
}
