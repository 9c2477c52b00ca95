package daemon

import "testing"

// FuzzParseRange feeds arbitrary Range headers, as a client resuming a NAR sends them:
// a range is refused or lies within the NAR and is not empty.
func FuzzParseRange(f *testing.F) {
	for _, h := range []string{"", "bytes=0-", "bytes=100-199", "bytes=-500", "bytes=0-0", "bytes=5-1", "bytes=1-2,3-4", "bytes=-0", "bytes=99999999999999999999-", "items=0-1"} {
		f.Add(h, int64(1000))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size <= 0 {
			return // a NAR has at least its magic
		}
		start, end, ranged, err := parseRange(h, size)
		if err != nil {
			return
		}
		if start < 0 || end > size || start >= end {
			t.Fatalf("parseRange(%q, %d) = [%d, %d)", h, size, start, end)
		}
		if !ranged && (start != 0 || end != size) {
			t.Fatalf("parseRange(%q, %d): not ranged but [%d, %d)", h, size, start, end)
		}
	})
}
