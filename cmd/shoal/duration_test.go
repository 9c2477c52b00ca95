package main

import (
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "90d", want: 90 * day},
		{in: "2w", want: 14 * day},
		{in: "1d12h", want: 36 * time.Hour},
		{in: "2160h", want: 90 * day},
		{in: "30s", want: 30 * time.Second},
		{in: "1.5h", want: 90 * time.Minute},
		{in: "-1h", want: -time.Hour},
		{in: "0", want: 0},
		{in: "5", bad: true},
		{in: "", bad: true},
		{in: "d", bad: true},
		{in: "3 days", bad: true},
		{in: "10y", bad: true},
	}
	for _, tc := range tests {
		got, err := parseDuration(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parseDuration(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	if s := formatDuration(90 * day); s != "90d" {
		t.Errorf("formatDuration(90d) = %q", s)
	}
}
