package nixcache

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ServeNAR answers a request for a NAR body through http.ServeContent, which handles
// HEAD, Range, If-Range and the conditional headers, with the one fix Nix's resumed
// transfers need: a range that selects no byte ("bytes=-0") is refused with 416, where
// ServeContent answers 206 with an empty body and an inverted Content-Range. The body
// must have been verified; the caller sets Content-Type and any caching headers. A Range
// in another unit than bytes is ignored, and a position past an int64 clamped, as RFC
// 9110 says (ServeContent refuses both).
func ServeNAR(w http.ResponseWriter, r *http.Request, body io.ReadSeeker) {
	if h := r.Header.Get("Range"); h != "" {
		spec, ok := strings.CutPrefix(h, "bytes=")
		if !ok {
			r.Header.Del("Range")
		} else {
			// ServeContent refuses a position too large for an int64; every position
			// is clamped to the NAR anyway, so the largest int64 stands for it.
			r.Header.Set("Range", "bytes="+bigNumber.ReplaceAllStringFunc(spec, func(n string) string {
				if _, err := strconv.ParseInt(n, 10, 64); err != nil {
					return strconv.FormatInt(math.MaxInt64, 10)
				}
				return n
			}))
		}
	}
	if emptyRange(r.Header.Get("Range")) {
		size, err := body.Seek(0, io.SeekEnd)
		if err != nil {
			http.Error(w, "seeking in the NAR", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		http.Error(w, "the range selects no byte", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	http.ServeContent(w, r, "", time.Time{}, body)
}

var bigNumber = regexp.MustCompile(`[0-9]{19,}`)

// emptyRange reports a byte range set whose only ranges are zero-length suffixes.
func emptyRange(h string) bool {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return false
	}
	for part := range strings.SplitSeq(spec, ",") {
		if strings.TrimSpace(part) != "-0" {
			return false
		}
	}
	return true
}
