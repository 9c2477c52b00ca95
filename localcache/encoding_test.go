package localcache

import (
	"testing"
	"time"
)

func TestNarInfoEncoding(t *testing.T) {
	tests := []NarInfoEntry{
		{Raw: []byte("StorePath: /nix/store/x\nURL: nar/y.nar\n"), Source: "https://cache.nixos.org", Expires: time.Unix(1_700_000_000, 123).UTC()},
		{Raw: []byte{}, Expires: time.Unix(0, 0).UTC()},
		{Negative: true, Reason: "unreachable: dial tcp: connection refused", Source: "http://10.0.0.1", Expires: time.Unix(1_700_000_000, 0)},
		{Negative: true, Expires: time.Time{}},
		{Raw: []byte("x"), Expires: time.Date(1960, 1, 1, 0, 0, 0, 999_999_999, time.UTC)},
	}
	for _, e := range tests {
		v := encodeNarInfo(e)
		got, err := decodeNarInfo(v)
		if err != nil {
			t.Fatalf("decode(encode(%+v)): %v", e, err)
		}
		if !narInfoEqual(got, e) {
			t.Fatalf("round trip: got %+v, want %+v", got, e)
		}
		if e.Expires.IsZero() != got.Expires.IsZero() {
			t.Fatalf("zero time not preserved")
		}
		// The raw bytes run to the end of the record, so only cuts inside
		// the header can be detected.
		header := len(v) - len(e.Raw)
		for n := 0; n < header; n++ {
			if _, err := decodeNarInfo(v[:n]); err == nil {
				t.Fatalf("decoding %d of %d header bytes succeeded", n, header)
			}
		}
	}
	if _, err := decodeNarInfo([]byte{99, 0, 0, 0, 0, 0}); err == nil {
		t.Fatal("unknown format byte accepted")
	}
}

func TestNarRouteEncoding(t *testing.T) {
	tests := []NarRoute{
		{HashPart: "0c6kzph7l0dcbfmjap64f0czdafn3b7x", StorePath: "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello-2.12.1", Source: "https://cache.nixos.org", NarSize: 1 << 40, LastUsed: time.Unix(1_700_000_000, 42).UTC()},
		{},
	}
	for _, r := range tests {
		v := encodeNarRoute(r)
		got, err := decodeNarRoute(v)
		if err != nil {
			t.Fatalf("decode(encode(%+v)): %v", r, err)
		}
		if !routeEqual(got, r) {
			t.Fatalf("round trip: got %+v, want %+v", got, r)
		}
		for n := 0; n < len(v); n++ {
			if _, err := decodeNarRoute(v[:n]); err == nil {
				t.Fatalf("decoding %d of %d bytes succeeded", n, len(v))
			}
		}
		if _, err := decodeNarRoute(append(v, 0)); err == nil {
			t.Fatal("trailing byte accepted")
		}
	}
}
