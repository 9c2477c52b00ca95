package localcache

import (
	"reflect"
	"testing"
	"time"
)

// FuzzDecodeRecord feeds arbitrary bytes to every record decoder of the cache file. A
// cache file is local, but it outlives versions of shoal and can be damaged by the disk:
// a record must decode or fail with an error, never panic, and whatever decodes must
// survive an encode/decode round trip unchanged.
func FuzzDecodeRecord(f *testing.F) {
	when := time.Unix(1_700_000_000, 123).UTC()
	f.Add(byte(0), encodeNarInfo(NarInfoEntry{Raw: []byte("StorePath: /nix/store/x\n"), Source: "https://cache.nixos.org", Expires: when}))
	f.Add(byte(0), encodeNarInfo(NarInfoEntry{Negative: true, Reason: "not found", Expires: when}))
	f.Add(byte(1), encodeNarRoute(NarRoute{HashPart: "0blk7gr1f1qcf1h59igmgxr9qkz520pn", StorePath: "/nix/store/0blk7gr1f1qcf1h59igmgxr9qkz520pn-hello-2.12", Source: "store", NarSize: 1 << 20, LastUsed: when}))
	f.Add(byte(2), encodeLocation(ChunkLocation{StorePath: "/nix/store/0blk7gr1f1qcf1h59igmgxr9qkz520pn-hello-2.12", Offset: 4096, Length: 65536}))
	f.Add(byte(3), encodeSeeded(SeededPath{NarHash: [32]byte{1, 2, 3}, NarSize: 12345, Chunks: 3, Indexed: when}))
	f.Add(byte(4), encodePin(Pin{StorePath: "/nix/store/0blk7gr1f1qcf1h59igmgxr9qkz520pn-hello-2.12", Origin: "/run/current-system", NarKey: "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"}))
	f.Fuzz(func(t *testing.T, kind byte, v []byte) {
		var got, again any
		var err error
		switch kind % 5 {
		case 0:
			var e NarInfoEntry
			if e, err = decodeNarInfo(v); err == nil {
				got = e
				again, err = decodeNarInfo(encodeNarInfo(e))
			}
		case 1:
			var r NarRoute
			if r, err = decodeNarRoute(v); err == nil {
				got = r
				again, err = decodeNarRoute(encodeNarRoute(r))
			}
		case 2:
			var l ChunkLocation
			if l, err = decodeLocation(v); err == nil {
				got = l
				again, err = decodeLocation(encodeLocation(l))
			}
		case 3:
			var s SeededPath
			if s, err = decodeSeeded("/nix/store/x", v); err == nil {
				got = s
				again, err = decodeSeeded("/nix/store/x", encodeSeeded(s))
			}
		case 4:
			var p Pin
			if p, err = decodePin(v); err == nil {
				got = p
				again, err = decodePin(encodePin(p))
			}
		}
		if got == nil {
			return // refused: fine
		}
		if err != nil {
			t.Fatalf("re-encoding of an accepted record does not decode: %v (record %+v)", err, got)
		}
		if !reflect.DeepEqual(normalize(got), normalize(again)) {
			t.Fatalf("round trip changed the record:\n got %+v\nwant %+v", again, got)
		}
	})
}

// normalize makes empty and nil Raw compare equal: the encoding cannot tell them apart.
func normalize(v any) any {
	if e, ok := v.(NarInfoEntry); ok && len(e.Raw) == 0 {
		e.Raw = nil
		return e
	}
	return v
}
