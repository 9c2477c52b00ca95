package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/csv"
	"encoding/xml"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/shoal-nix/shoal/internal/cachetest"
)

// logEvent is one request the test logs, with everything the expected
// answers are computed from, independently of the parser.
type logEvent struct {
	at     time.Time
	method string
	path   string
	status int
	bytes  int64
}

type testNar struct {
	key, storePath string
	published      time.Time
	size           int64
}

func TestAnalyzeLogsCommand(t *testing.T) {
	end := time.Date(2026, 10, 31, 0, 0, 0, 0, time.UTC)
	start := end.Add(-60 * 24 * time.Hour)
	cache := cachetest.New(t, "logs-1")
	var nars []testNar
	for i, ageDays := range []int{400, 200, 100, 40, 10} {
		hp := cachetest.HashPart(fmt.Sprint("logs", i))
		ni := cache.Add(t, hp, fmt.Sprintf("pkg-%d", i), bytes.Repeat([]byte{byte(i)}, 1000*(i+1)), "none")
		pub := end.Add(-time.Duration(ageDays) * 24 * time.Hour)
		if err := os.Chtimes(filepath.Join(cache.Dir, ni.URL), pub, pub); err != nil {
			t.Fatal(err)
		}
		nars = append(nars, testNar{key: ni.URL, storePath: ni.StorePath, published: pub, size: int64(ni.FileSize)})
	}
	// A NAR deleted from the cache since: its requests have no age.
	gone := testNar{key: "nar/" + cachetest.HashPart("gone") + cachetest.HashPart("gone2")[:20] + ".nar.xz", storePath: "/nix/store/" + cachetest.HashPart("gone") + "-gone", size: 777}

	rng := rand.New(rand.NewPCG(7, 7))
	var events []logEvent
	randomTime := func(after time.Time) time.Time {
		from := max(after.Unix(), start.Unix())
		return time.Unix(from+rng.Int64N(end.Unix()-from), 0).UTC()
	}
	for range 3000 {
		n := nars[rng.IntN(len(nars))]
		if rng.IntN(40) == 0 {
			n = gone
		}
		at := randomTime(n.published)
		switch r := rng.IntN(100); {
		case r < 50:
			events = append(events, logEvent{at, "GET", "/" + n.key, 200, n.size})
		case r < 55:
			events = append(events, logEvent{at, "GET", "/" + n.key, 206, rng.Int64N(n.size)})
		case r < 58:
			events = append(events, logEvent{at, "HEAD", "/" + n.key, 200, 0})
		case r < 60:
			events = append(events, logEvent{at, "GET", "/" + n.key, 404, 150})
		case r < 61:
			events = append(events, logEvent{at, "PUT", "/" + n.key, 200, 0})
		case r < 62:
			events = append(events, logEvent{at, "GET", "/" + n.key, 304, 0})
		case r < 85:
			events = append(events, logEvent{at, "GET", "/" + filepath.Base(n.storePath)[:32] + ".narinfo", 200, 500})
		case r < 97:
			events = append(events, logEvent{at, "GET", "/" + cachetest.HashPart(fmt.Sprint(r, at)) + ".narinfo", 404, 0})
		default:
			events = append(events, logEvent{at, "GET", "/nix-cache-info", 200, 50})
		}
	}
	// A CI fleet hammers the oldest NAR for one minute.
	burst := end.Add(-20*24*time.Hour + 17*time.Minute)
	for i := range 90 {
		events = append(events, logEvent{burst.Add(time.Duration(i%60) * time.Second), "GET", "/" + nars[0].key, 200, nars[0].size})
	}

	// Three files in three formats; the S3 one out of time order, so a NAR's
	// first appearance is not always in the first file read.
	dir := t.TempDir()
	rng.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
	parts := [][]logEvent{events[:len(events)/3], events[len(events)/3 : 2*len(events)/3], events[2*len(events)/3:]}
	slices.SortFunc(parts[0], func(a, b logEvent) int { return a.at.Compare(b.at) })
	slices.SortFunc(parts[2], func(a, b logEvent) int { return a.at.Compare(b.at) })
	var combined, s3, cf bytes.Buffer
	for i, e := range parts[0] {
		if i == 100 {
			combined.WriteString(`198.51.100.7 - - [02/Oct/2026:14:03:07 +0000] "GET /nar/0` + "\n") // cut short: line 101
		}
		ip := "198.51.100.7"
		if i%3 == 0 {
			ip = "2001:db8::" + strconv.Itoa(i)
		}
		size := strconv.FormatInt(e.bytes, 10)
		if e.bytes == 0 && i%2 == 0 {
			size = "-"
		}
		fmt.Fprintf(&combined, "%s - - [%s] \"%s %s HTTP/1.1\" %d %s \"https://example.org/a page\" \"curl/8.7.1 Nix/2.24.9 (x86_64-linux) \\\"x\\\"\"\n",
			ip, e.at.In(time.FixedZone("", -7*3600)).Format("02/Jan/2006:15:04:05 -0700"), e.method, e.path, e.status, size)
	}
	for _, e := range parts[1] {
		size := strconv.FormatInt(e.bytes, 10)
		if e.bytes == 0 {
			size = "-"
		}
		fmt.Fprintf(&s3, "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be nix-cache [%s] 2001:db8::9 - 3E57427F3EXAMPLE REST.%s.OBJECT %s \"%s %s HTTP/1.1\" %d - %s 999 70 10 \"-\" \"Nix/2.18.1 curl\" - hostid SigV4 ECDHE-RSA-AES128-GCM-SHA256 AuthHeader nix-cache.s3.amazonaws.com TLSv1.2 - -\n",
			e.at.Format("02/Jan/2006:15:04:05 -0700"), e.method, strings.TrimPrefix(e.path, "/"), e.method, e.path, e.status, size)
	}
	s3.WriteString("this line is not a log line\n") // line len(parts[1])+1
	cf.WriteString("#Version: 1.0\n#Fields: date time x-edge-location sc-bytes c-ip cs-method cs(Host) cs-uri-stem sc-status cs(Referer) cs(User-Agent)\n")
	for _, e := range parts[2] {
		fmt.Fprintf(&cf, "%s\t%s\tLAX1\t%d\t192.0.2.1\t%s\td1.cloudfront.net\t%s\t%d\t-\tNix/2.18.1%%20curl\n",
			e.at.Format(time.DateOnly), e.at.Format(time.TimeOnly), e.bytes, e.method, e.path, e.status)
	}
	files := []string{filepath.Join(dir, "access.log.1.gz"), filepath.Join(dir, "s3.log"), filepath.Join(dir, "cloudfront.log")}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(combined.Bytes())
	zw.Close()
	for i, b := range [][]byte{gz.Bytes(), s3.Bytes(), cf.Bytes()} {
		if err := os.WriteFile(files[i], b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	keep := filepath.Join(dir, "keep.txt")
	if err := os.WriteFile(keep, []byte("# keep the newest two and pkg-1\n"+nars[4].storePath+"\n"+filepath.Base(nars[3].storePath)[:32]+".narinfo\n\n"+nars[1].key+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) (string, error) {
		app := newApp()
		var stdout bytes.Buffer
		app.Writer = &stdout
		err := app.RunContext(context.Background(), append([]string{"shoal", "--log-level", "warn", "analyze", "logs"}, args...))
		return stdout.String(), err
	}

	refusals := map[string][]string{
		"no files":                     {},
		"unknown format":               append([]string{"--format", "w3c"}, files...),
		"bad age":                      append([]string{"--older-than", "thirty"}, files...),
		"store paths without --cache":  append([]string{"--keep-narinfos-from", keep}, files...),
		"http cache":                   append([]string{"--cache", "http://127.0.0.1:1"}, files...),
		"missing file":                 {filepath.Join(dir, "nope.log")},
		"a directory":                  {dir},
		"keep-list that is not a list": append([]string{"--cache", cache.Dir, "--keep-narinfos-from", files[1]}, files...),
	}
	for name, args := range refusals {
		if _, err := run(args...); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}

	first, last := events[0].at, events[0].at
	for _, e := range events {
		if e.at.Before(first) {
			first = e.at
		}
		if e.at.After(last) {
			last = e.at
		}
	}
	spanMinutes := last.Unix()/60 - first.Unix()/60 + 1
	// Expected answers, from the events.
	type scen struct {
		name    string
		retired func(n testNar, at time.Time) bool
	}
	isNARTraffic := func(e logEvent) bool {
		return strings.HasPrefix(e.path, "/nar/") && (e.method == "GET" || e.method == "HEAD") && (e.status == 200 || e.status == 206)
	}
	byKey := map[string]testNar{}
	for _, n := range nars {
		byKey["/"+n.key] = n
	}
	kept := map[string]bool{nars[4].key: true, nars[3].key: true, nars[1].key: true}
	olderThan := func(days int) func(testNar, time.Time) bool {
		return func(n testNar, at time.Time) bool { return at.Sub(n.published) >= time.Duration(days)*24*time.Hour }
	}
	scens := []scen{
		{"older than 30d", olderThan(30)}, {"older than 90d", olderThan(90)}, {"older than 365d", olderThan(365)},
		{"not in keep.txt", func(n testNar, _ time.Time) bool { return !kept[n.key] }},
	}
	type want struct {
		requests, bytes, peakReq, peakBytes int64
		p99                                 int64
		peakAt                              time.Time
		nars                                int
		hot                                 []string // by requests: key,requests,bytes
	}
	expect := func(sc scen) want {
		var w want
		perMin := map[int64]int64{}
		perMinBytes := map[int64]int64{}
		perNAR := map[string][2]int64{}
		for _, e := range events {
			n, ok := byKey[e.path]
			if !isNARTraffic(e) || !ok || !sc.retired(n, e.at) {
				continue
			}
			w.requests++
			w.bytes += e.bytes
			perMin[e.at.Unix()/60]++
			perMinBytes[e.at.Unix()/60] += e.bytes
			c := perNAR[n.key]
			perNAR[n.key] = [2]int64{c[0] + 1, c[1] + e.bytes}
		}
		for m, c := range perMin {
			at := time.Unix(m*60, 0).UTC()
			if c > w.peakReq || c == w.peakReq && at.Before(w.peakAt) {
				w.peakReq, w.peakAt = c, at
			}
			w.peakBytes = max(w.peakBytes, perMinBytes[m])
		}
		// The 99th percentile by nearest rank over every minute of the logs,
		// those without retired requests as zeros.
		counts := make([]int64, spanMinutes)
		i := 0
		for _, c := range perMin {
			counts[i] = c
			i++
		}
		slices.Sort(counts)
		w.p99 = counts[(99*len(counts)+99)/100-1]
		w.nars = len(perNAR)
		keys := make([]string, 0, len(perNAR))
		for k := range perNAR {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b string) int { return cmp.Or(cmp.Compare(perNAR[b][0], perNAR[a][0]), strings.Compare(a, b)) })
		for _, k := range keys[:min(2, len(keys))] {
			w.hot = append(w.hot, fmt.Sprintf("%s,%d,%d", k, perNAR[k][0], perNAR[k][1]))
		}
		return w
	}
	var narReqs, narBytes int64
	for _, e := range events {
		if isNARTraffic(e) {
			narReqs++
			narBytes += e.bytes
		}
	}

	out := filepath.Join(dir, "report")
	table, err := run("--cache", "file://"+cache.Dir, "--older-than", "90d,30d", "--older-than", "365d", "--keep-narinfos-from", keep, "--top", "2", "--out", out, files[0], files[1], files[2])
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		fmt.Sprintf("3 log files, %d requests from ", len(events)),
		fmt.Sprintf("NAR traffic (GET/HEAD of /nar/ answered 200/206): %d requests", narReqs),
		"2 malformed lines",
		"access.log.1.gz:101: missing quoted request",
		fmt.Sprintf("s3.log:%d:", len(parts[1])+1),
		"upload (last-modified) time",
		"no longer in the main cache",
	} {
		if !strings.Contains(table, s) {
			t.Errorf("table lacks %q:\n%s", s, table)
		}
	}
	summary := readCSV(t, filepath.Join(out, "summary.csv"))
	hottest := readCSV(t, filepath.Join(out, "hottest.csv"))
	if len(summary) != 1+len(scens) {
		t.Fatalf("summary.csv: %d rows:\n%v", len(summary), summary)
	}
	for i, sc := range scens {
		w := expect(sc)
		row := summary[1+i]
		got := fmt.Sprintf("%s nar=%s/%s retired=%s/%s/%s peak=%s@%s bytes=%s", row[0], row[3], row[4], row[6], row[7], row[5], row[10], row[11], row[12])
		wantS := fmt.Sprintf("%s nar=%d/%d retired=%d/%d/%d peak=%d@%s bytes=%d", sc.name, narReqs, narBytes, w.requests, w.bytes, w.nars, w.peakReq,
			w.peakAt.Format(time.RFC3339), w.peakBytes)
		if w.peakReq == 0 {
			wantS = strings.Replace(wantS, "@"+w.peakAt.Format(time.RFC3339), "@", 1)
		}
		if got != wantS {
			t.Errorf("summary:\n got  %s\n want %s", got, wantS)
		}
		if mean := strconv.FormatFloat(float64(w.requests)/float64(spanMinutes), 'f', 3, 64); row[14] != mean {
			t.Errorf("%s: mean requests per minute %s, want %s", sc.name, row[14], mean)
		}
		if row[15] != fmt.Sprint(w.p99) {
			t.Errorf("%s: p99 requests per minute %s, want %d", sc.name, row[15], w.p99)
		}
		var gotHot []string
		for _, r := range hottest[1:] {
			if r[0] == sc.name && r[1] == "requests" {
				gotHot = append(gotHot, strings.Join([]string{r[3], r[5], r[6]}, ","))
				if n := byKey["/"+r[3]]; r[4] != n.storePath {
					t.Errorf("hottest.csv names %s as %q, want %q", r[3], r[4], n.storePath)
				}
			}
		}
		if !slices.Equal(gotHot, w.hot) {
			t.Errorf("%s: hottest by requests %v, want %v", sc.name, gotHot, w.hot)
		}
	}
	// The CI burst is the peak of every cut-off that retires the oldest NAR.
	if w := expect(scens[0]); w.peakReq < 90 || !w.peakAt.Equal(burst) {
		t.Errorf("test setup: the burst at %v is not the 30d peak (%d at %v)", burst, w.peakReq, w.peakAt)
	}
	minutes := readCSV(t, filepath.Join(out, "minutes.csv"))
	var sum int64
	for _, r := range minutes[1:] {
		n, _ := strconv.ParseInt(r[1], 10, 64)
		sum += n
	}
	if sum != narReqs {
		t.Errorf("minutes.csv: %d NAR requests, want %d", sum, narReqs)
	}
	svg, err := os.ReadFile(filepath.Join(out, "logs.svg"))
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(svg, new(struct{})); err != nil {
		t.Errorf("logs.svg: %v", err)
	}

	// Without the cache, ages count from each NAR's first appearance in the
	// logs (whichever file it is in), and the gone NAR counts like the rest.
	firstSeen := map[string]time.Time{}
	for _, e := range events {
		if isNARTraffic(e) {
			if f, ok := firstSeen[e.path]; !ok || e.at.Before(f) {
				firstSeen[e.path] = e.at
			}
		}
	}
	byKey["/"+gone.key] = gone
	for k, n := range byKey {
		n.published = firstSeen[k]
		n.storePath = ""
		byKey[k] = n
	}
	if _, err := run("--older-than", "30d", "--out", out, files[0], files[1], files[2]); err != nil {
		t.Fatal(err)
	}
	summary = readCSV(t, filepath.Join(out, "summary.csv"))
	w := expect(scens[0])
	if row := summary[1]; row[2] != "first_seen" || row[6] != fmt.Sprint(w.requests) || row[7] != fmt.Sprint(w.bytes) || row[10] != fmt.Sprint(w.peakReq) {
		t.Errorf("first-seen ages: %v, want %d requests, %d bytes, peak %d", row, w.requests, w.bytes, w.peakReq)
	}
}

func readCSV(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return rows
}
