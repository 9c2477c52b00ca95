package accesslog

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// LogOptions says what AnalyzeLogs measures.
type LogOptions struct {
	Format LogFormat
	// OlderThan lists cut-off ages: for each, the NARs at least that old at
	// request time are the retired ones (one scenario each).
	OlderThan []time.Duration
	// Keep, if set, adds a scenario that retires every NAR it does not name.
	Keep *KeepList
	// Resolver gives NAR ages and store paths from the main cache. Without
	// it, a NAR's age is counted from its first appearance in the logs.
	Resolver NarResolver
	// Top is how many of the hottest retired NARs to list per scenario.
	Top int
	// Examples is how many malformed lines to quote.
	Examples int
}

// NarFacts is what the main cache says about one NAR file.
type NarFacts struct {
	StorePath string    // from the narinfo naming the NAR; "" if none does
	Modified  time.Time // the NAR file's last modification (upload) time
}

// NarResolver looks NARs up in the main binary cache.
type NarResolver interface {
	// Resolve describes the NARs with these keys ("nar/….nar.xz"); keys
	// missing from the result are not in the cache.
	Resolve(ctx context.Context, keys []string) (map[string]NarFacts, error)
}

// Count is a number of requests and the bytes sent for them.
type Count struct{ Requests, Bytes uint64 }

func (c *Count) add(bytes int64) {
	c.Requests++
	c.Bytes += uint64(max(bytes, 0))
}

// Malformed quotes a line that could not be parsed.
type Malformed struct {
	File string
	Line int
	Text string
	Err  string
}

// HotNAR is one NAR of a hottest list.
type HotNAR struct {
	Key       string // nar/… as requested
	StorePath string // "" without a cache, or when no narinfo names the NAR
	Count
}

// Name is the store path when known, else the NAR URL.
func (h HotNAR) Name() string { return cmp.Or(h.StorePath, h.Key) }

// ScenarioResult is the load one retirement rule sends to the reassembly
// service.
type ScenarioResult struct {
	Name      string
	OlderThan time.Duration // the cut-off age, unless Keep
	Keep      bool          // retires what the keep-list does not name
	Retired   Count
	NARs      int // distinct retired NARs requested
	// PeakRequests is the most retired requests in one clock minute, at
	// PeakRequestsAt; PeakBytes likewise for bytes.
	PeakRequests, PeakBytes     uint64
	PeakRequestsAt, PeakBytesAt time.Time
	// P99Requests is the 99th percentile of retired requests per minute
	// over every minute the logs span, quiet ones included: a service sized
	// for it is short of capacity in only 1% of minutes, where the peak may
	// be one burst.
	P99Requests               uint64
	HotByRequests, HotByBytes []HotNAR
}

// Minute is the NAR traffic of one clock minute, in all and per scenario.
type Minute struct {
	At      time.Time
	All     Count
	Retired []Count // indexed like LogReport.Scenarios
}

// LogReport is the outcome of AnalyzeLogs.
type LogReport struct {
	Files       int
	Lines       uint64 // lines holding a request
	Malformed   uint64
	Examples    []Malformed
	First, Last time.Time
	// SpanMinutes counts the clock minutes from the first request's to the
	// last one's, both included.
	SpanMinutes int64
	// NAR is the NAR traffic: successful (200/206) GET and HEAD of /nar/
	// URLs. NARFailed counts the other requests for /nar/ URLs.
	NAR, NARFailed Count
	NARs           int // distinct NARs in NAR
	// Narinfo requests never reach the reassembly service: narinfos stay.
	NarinfoHits, NarinfoMisses, NarinfoOther Count
	Other                                    Count
	// AgeFromCache tells whether ages are the NAR files' upload times in
	// the main cache (else, their first appearance in the logs: a lower
	// bound on their age).
	AgeFromCache bool
	// NotInCache is the NAR traffic to NARs the cache does not hold; their
	// age is unknown and they are never counted as retired.
	NotInCache Count
	Scenarios  []ScenarioResult
	Minutes    []Minute
}

// narStat accumulates one NAR's traffic.
type narStat struct {
	key       string
	storePath string
	born      int64 // Unix seconds: upload time, or first appearance
	known     bool  // born is known
	// keepRetired: the keep-list scenario retires this NAR. Only NARs a
	// narinfo names can be retired (store retire works from narinfos); with
	// no cache to ask, every NAR not kept counts.
	keepRetired bool
	retired     []Count
}

type scenario struct {
	name      string
	olderThan int64 // seconds; -1 for the keep-list
}

// AnalyzeLogs reads the access logs twice, streaming: first to find every
// NAR requested and when it first appears, then to count. Memory grows with
// the number of distinct NARs and of minutes the logs span, not with lines.
func AnalyzeLogs(ctx context.Context, files []string, opts LogOptions) (*LogReport, error) {
	if len(opts.OlderThan) == 0 && opts.Keep == nil {
		return nil, errors.New("nothing to measure: give cut-off ages or a keep-list")
	}
	var scens []scenario
	for _, d := range opts.OlderThan {
		if d < 0 {
			return nil, fmt.Errorf("cut-off age %v is negative", d)
		}
		scens = append(scens, scenario{name: "older than " + FormatAge(d), olderThan: int64(d / time.Second)})
	}
	if opts.Keep != nil {
		if opts.Keep.NeedsStorePaths() && opts.Resolver == nil {
			return nil, errors.New("a keep-list of store paths needs the main cache to map NAR URLs to store paths")
		}
		scens = append(scens, scenario{name: "not in " + opts.Keep.Name, olderThan: -1})
	}

	// Pass 1: the NARs requested and their first appearance.
	nars := map[string]*narStat{}
	err := scanLogs(ctx, files, opts.Format, func(r *Request) {
		key, ok := narKey(r)
		if !ok {
			return
		}
		if n := nars[string(key)]; n != nil {
			n.born = min(n.born, r.Unix)
			return
		}
		nars[string(key)] = &narStat{key: string(key), born: r.Unix, known: true, retired: make([]Count, len(scens))}
	}, nil)
	if err != nil {
		return nil, err
	}

	rep := &LogReport{Files: len(files), AgeFromCache: opts.Resolver != nil}
	if opts.Resolver != nil {
		keys := make([]string, 0, len(nars))
		for k := range nars {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		facts, err := opts.Resolver.Resolve(ctx, keys)
		if err != nil {
			return nil, fmt.Errorf("looking up the requested NARs in the main cache: %w", err)
		}
		for k, n := range nars {
			f, ok := facts[k]
			n.known = ok
			n.born = f.Modified.Unix()
			n.storePath = f.StorePath
		}
	}
	if opts.Keep != nil {
		for _, n := range nars {
			n.keepRetired = n.known && !opts.Keep.Has(n.key, n.storePath) && (opts.Resolver == nil || n.storePath != "")
		}
	}

	// Pass 2: count.
	minutes := map[int64]*Minute{}
	first, last := int64(math.MaxInt64), int64(math.MinInt64)
	err = scanLogs(ctx, files, opts.Format, func(r *Request) {
		rep.Lines++
		first, last = min(first, r.Unix), max(last, r.Unix)
		switch {
		case isNARPath(r.Path):
			key, ok := narKey(r)
			if !ok {
				rep.NARFailed.add(r.Bytes)
				return
			}
			rep.NAR.add(r.Bytes)
			n := nars[string(key)]
			if n == nil {
				// Appended to a live log after the first pass: first seen now,
				// and never looked up in the cache.
				n = &narStat{key: string(key), born: r.Unix, known: opts.Resolver == nil, retired: make([]Count, len(scens))}
				n.keepRetired = opts.Keep != nil && !opts.Keep.Has(n.key, "") && n.known
				nars[n.key] = n
			}
			minute := floorDiv(r.Unix, 60)
			m := minutes[minute]
			if m == nil {
				m = &Minute{At: time.Unix(minute*60, 0).UTC(), Retired: make([]Count, len(scens))}
				minutes[minute] = m
			}
			m.All.add(r.Bytes)
			if !n.known {
				rep.NotInCache.add(r.Bytes)
				return
			}
			for i, s := range scens {
				if s.olderThan >= 0 && r.Unix-n.born >= s.olderThan || s.olderThan < 0 && n.keepRetired {
					n.retired[i].add(r.Bytes)
					m.Retired[i].add(r.Bytes)
				}
			}
		case bytes.HasSuffix(r.Path, []byte(".narinfo")):
			switch r.Status {
			case 200:
				rep.NarinfoHits.add(r.Bytes)
			case 404:
				rep.NarinfoMisses.add(r.Bytes)
			default:
				rep.NarinfoOther.add(r.Bytes)
			}
		default:
			rep.Other.add(r.Bytes)
		}
	}, func(m Malformed) {
		rep.Malformed++
		if len(rep.Examples) < opts.Examples {
			rep.Examples = append(rep.Examples, m)
		}
	})
	if err != nil {
		return nil, err
	}
	if rep.Lines > 0 {
		rep.First, rep.Last = time.Unix(first, 0).UTC(), time.Unix(last, 0).UTC()
		rep.SpanMinutes = floorDiv(last, 60) - floorDiv(first, 60) + 1
	}

	rep.Minutes = make([]Minute, 0, len(minutes))
	for _, m := range minutes {
		rep.Minutes = append(rep.Minutes, *m)
	}
	slices.SortFunc(rep.Minutes, func(a, b Minute) int { return a.At.Compare(b.At) })
	rep.NARs = len(nars)
	for i, s := range scens {
		sr := ScenarioResult{Name: s.name, Keep: s.olderThan < 0}
		if !sr.Keep {
			sr.OlderThan = time.Duration(s.olderThan) * time.Second
		}
		var hot []HotNAR
		for _, n := range nars {
			if c := n.retired[i]; c.Requests > 0 {
				sr.Retired.Requests += c.Requests
				sr.Retired.Bytes += c.Bytes
				hot = append(hot, HotNAR{Key: n.key, StorePath: n.storePath, Count: c})
			}
		}
		sr.NARs = len(hot)
		sr.HotByRequests = topN(hot, opts.Top, func(h HotNAR) uint64 { return h.Requests })
		sr.HotByBytes = topN(hot, opts.Top, func(h HotNAR) uint64 { return h.Bytes })
		perMinute := make([]uint64, max(rep.SpanMinutes, int64(len(rep.Minutes))))
		for j, m := range rep.Minutes {
			perMinute[j] = m.Retired[i].Requests
			if c := m.Retired[i]; c.Requests > sr.PeakRequests {
				sr.PeakRequests, sr.PeakRequestsAt = c.Requests, m.At
			}
			if c := m.Retired[i]; c.Bytes > sr.PeakBytes {
				sr.PeakBytes, sr.PeakBytesAt = c.Bytes, m.At
			}
		}
		if len(perMinute) > 0 {
			// Nearest rank; the minutes without NAR traffic are the zeros.
			slices.Sort(perMinute)
			sr.P99Requests = perMinute[int(math.Ceil(0.99*float64(len(perMinute))))-1]
		}
		rep.Scenarios = append(rep.Scenarios, sr)
	}
	return rep, nil
}

// floorDiv divides rounding down, so times before 1970 fall in the right
// minute too.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// topN returns the n largest by key, ties broken by name so reports are
// stable from run to run.
func topN(hot []HotNAR, n int, key func(HotNAR) uint64) []HotNAR {
	s := slices.Clone(hot)
	slices.SortFunc(s, func(a, b HotNAR) int {
		if c := cmp.Compare(key(b), key(a)); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return s[:min(n, len(s))]
}

// isNARPath reports whether path names a NAR file: Nix caches put them
// under nar/, possibly below a prefix the CDN adds.
func isNARPath(path []byte) bool {
	return bytes.Contains(path, []byte("/nar/"))
}

// narKey returns the cache key (nar/…) of a request that is NAR traffic:
// a successful GET or HEAD of a NAR file.
func narKey(r *Request) ([]byte, bool) {
	if r.Status != 200 && r.Status != 206 || string(r.Method) != "GET" && string(r.Method) != "HEAD" {
		return nil, false
	}
	i := bytes.Index(r.Path, []byte("/nar/"))
	if i < 0 || len(r.Path) == i+len("/nar/") {
		return nil, false
	}
	return r.Path[i+1:], true
}

// maxLine bounds the line buffer; longer lines are counted as malformed.
const maxLine = 64 << 10

// scanLogs parses every line of the files in order. onBad may be nil.
func scanLogs(ctx context.Context, files []string, format LogFormat, onReq func(*Request), onBad func(Malformed)) error {
	for _, name := range files {
		if err := scanLog(ctx, name, format, onReq, onBad); err != nil {
			return err
		}
	}
	return nil
}

func scanLog(ctx context.Context, name string, format LogFormat, onReq func(*Request), onBad func(Malformed)) error {
	rc, err := OpenLog(name)
	if err != nil {
		return err
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, maxLine)
	p := NewLineParser(format)
	bad := func(n int, line []byte, err error) {
		if onBad != nil {
			onBad(Malformed{File: name, Line: n, Text: truncateLine(line), Err: err.Error()})
		}
	}
	for n := 1; ; n++ {
		if n%65536 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			bad(n, line, fmt.Errorf("line longer than %d bytes", maxLine))
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("reading %s: %w", name, err)
			}
			continue
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("reading %s: %w", name, err)
		}
		if len(line) > 0 {
			req, perr := p.Parse(bytes.TrimSuffix(line, []byte("\n")))
			switch {
			case perr == nil:
				onReq(&req)
			case !IsSkip(perr):
				bad(n, line, perr)
			}
		}
		if err == io.EOF {
			return nil
		}
	}
}

func truncateLine(b []byte) string {
	b = bytes.TrimRight(b, "\r\n")
	if len(b) > 200 {
		return strconv.Quote(string(b[:200])) + "..."
	}
	return strconv.Quote(string(b))
}

// OpenLog opens an access log, decompressing gzip (rotated logs) and zstd
// by their magic bytes rather than by name.
func OpenLog(name string) (io.ReadCloser, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("opening log: %w", err)
	}
	br := bufio.NewReaderSize(f, 256<<10)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		// Multistream: rotated logs are often concatenated .gz files.
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("reading %s: %w", name, err)
		}
		return readCloser{Reader: &namedErr{r: zr, name: name}, close: func() error { zr.Close(); return f.Close() }}, nil
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("reading %s: %w", name, err)
		}
		return readCloser{Reader: &namedErr{r: zr, name: name}, close: func() error { zr.Close(); return f.Close() }}, nil
	}
	return readCloser{Reader: br, close: f.Close}, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }

// namedErr says which file a decompression error is in: a truncated .gz
// among dozens of rotated logs is otherwise hard to find.
type namedErr struct {
	r    io.Reader
	name string
}

func (n *namedErr) Read(p []byte) (int, error) {
	k, err := n.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("decompressing %s: %w", n.name, err)
	}
	return k, err
}

// ParseAge parses a cut-off age: a Go duration ("36h") or a whole number
// of days or weeks ("30d", "12w").
func ParseAge(s string) (time.Duration, error) {
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			v, err := strconv.ParseUint(n, 10, 32)
			if err != nil {
				return 0, fmt.Errorf("age %q: want a whole number before %q, e.g. 30d", s, suffix)
			}
			return time.Duration(v) * unit, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("age %q: want e.g. 30d, 12w or 36h", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("age %q is negative", s)
	}
	return d, nil
}

// FormatAge writes whole days as "30d", anything else as a Go duration.
func FormatAge(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}
