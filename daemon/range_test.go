package daemon_test

import (
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/manifest"
)

// TestRangeFollowsRFC9110 sends Range headers a resuming client, a proxy or a scanner
// may send: RFC 9110 says to ignore a unit the server doesn't know and to clamp a
// last position past the end; 416 is for ranges that start past it. A malformed
// range may be ignored or refused.
func TestRangeFollowsRFC9110(t *testing.T) {
	c := cachetest.New(t, "range-1")
	nar := noise(9, 300<<10)
	ni := c.Add(t, cachetest.HashPart("range"), "range-1.0", nar, "none")
	_, base := startDaemon(t, daemon.Config{Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey}})
	mustGet(t, base+"/"+ni.HashPart()+".narinfo", 200)
	size := int64(len(nar))
	tests := []struct {
		name, rangeHdr string
		status         int
		start, end     int64 // the body expected: nar[start:end]
	}{
		{"plain", "bytes=10-20", 206, 10, 21},
		{"open end", "bytes=1000-", 206, 1000, size},
		{"suffix", "bytes=-100", 206, size - 100, size},
		{"unknown unit", "items=0-5", 200, 0, size},
		{"end past the NAR", fmt.Sprintf("bytes=5-%d", size*2), 206, 5, size},
		{"end past int64", "bytes=0-99999999999999999999", 206, 0, size},
		{"end at int64's largest", "bytes=100-9223372036854775807", 206, 100, size},
		{"suffix past int64", "bytes=-99999999999999999999", 206, 0, size},
		// RFC 9110 lets a server ignore or refuse a malformed range.
		{"last before first", "bytes=5-1", 200, 0, size},
		{"garbage", "bytes=x-y", 200, 0, size},
		{"start at the end", fmt.Sprintf("bytes=%d-", size), 416, 0, 0},
		{"start past int64", "bytes=99999999999999999999-", 416, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", base+"/nar/"+manifest.Key(ni.NarHash)+".nar", nil)
			req.Header.Set("Range", tc.rangeHdr)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if tc.status == 200 && tc.name != "unknown unit" && resp.StatusCode == 416 {
				return
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			switch tc.status {
			case 206:
				want := fmt.Sprintf("bytes %d-%d/%d", tc.start, tc.end-1, size)
				if got := resp.Header.Get("Content-Range"); got != want {
					t.Errorf("Content-Range %q, want %q", got, want)
				}
				fallthrough
			case 200:
				if string(body) != string(nar[tc.start:tc.end]) {
					t.Errorf("body is %d bytes, not bytes [%d, %d) of the NAR", len(body), tc.start, tc.end)
				}
			case 416:
				if got, want := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes */%d", size); got != want {
					t.Errorf("Content-Range %q, want %q", got, want)
				}
			}
		})
	}
}
