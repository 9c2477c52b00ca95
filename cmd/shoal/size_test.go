package main

import (
	"testing"

	"github.com/shoal-nix/shoal/daemon"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"4096", 4096, true},
		{"20GiB", 20 << 30, true},
		{"20 GiB", 20 << 30, true},
		{"500MB", 500e6, true},
		{"1.5KiB", 1536, true},
		{"2g", 2 << 30, true},
		{"3TB", 3e12, true},
		{"7b", 7, true},
		{"", 0, false},
		{"GiB", 0, false},
		{"-1GiB", 0, false},
		{"5 parsecs", 0, false},
		{"1e30TiB", 0, false},
		{"NaN", 0, false},
	}
	for _, tc := range tests {
		got, err := parseSize(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{
		0:              "0 B",
		1023:           "1023 B",
		1536:           "1.5 KiB",
		20 << 30:       "20.0 GiB",
		3 << 40:        "3.0 TiB",
		5 << 50:        "5120.0 TiB",
		16<<20 + 1<<19: "16.5 MiB",
	} {
		if got := daemon.FormatBytes(n); got != want {
			t.Errorf("daemon.FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
