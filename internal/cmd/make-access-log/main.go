// Command make-access-log writes a realistic access log of a binary cache, to
// try `shoal analyze logs` on before real logs are at hand. Run it through
// scripts/make-access-log.sh.
//
// It copies a file:// binary cache and dates its NAR files as if the store
// paths (in name order, i.e. version order) had been published one every
// -interval, the newest a few days before the log ends. Then it simulates
// -days of Nix clients: each fetch asks for a narinfo and then its NAR, newer
// versions are more popular, traffic follows the time of day, a CI fleet
// bursts on an old version once, and misses, cache-info requests, resumed
// downloads, aborted transfers, scanners and a few broken lines fill in what
// real logs hold. The same -seed gives the same log.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/shoal-nix/shoal/nixcache"
)

type nar struct {
	info      *nixcache.NarInfo
	published time.Time
}

func main() {
	cacheDir := flag.String("cache", "", "file binary cache to model the log on (its narinfos and NAR files)")
	out := flag.String("out", "", "output directory: access.log.gz and cache/ (a copy of the cache with NARs dated by publication)")
	days := flag.Int("days", 30, "days of log")
	perDay := flag.Float64("fetches-per-day", 10000, "average NAR fetches per day")
	interval := flag.Duration("interval", 45*24*time.Hour, "time between the publications of consecutive store paths")
	endStr := flag.String("end", "2026-11-01T00:00:00Z", "end of the log (RFC 3339)")
	format := flag.String("format", "combined", "log format: combined (nginx) or s3")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	if *cacheDir == "" || *out == "" {
		log.Fatal("usage: make-access-log -cache DIR -out DIR [flags]")
	}
	end, err := time.Parse(time.RFC3339, *endStr)
	if err != nil {
		log.Fatalf("-end: %v", err)
	}
	if *format != "combined" && *format != "s3" {
		log.Fatalf("-format %q: want combined or s3", *format)
	}
	nars, err := readCache(*cacheDir)
	if err != nil {
		log.Fatal(err)
	}
	for i := range nars {
		nars[i].published = end.Add(-5*24*time.Hour - time.Duration(len(nars)-1-i)*(*interval))
	}
	if err := copyCache(*cacheDir, filepath.Join(*out, "cache"), nars); err != nil {
		log.Fatal(err)
	}
	n, err := writeLog(filepath.Join(*out, "access.log.gz"), nars, end, *days, *perDay, *format, rand.New(rand.NewPCG(*seed, 0x5ea1)))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("wrote %d lines to %s\n", n, filepath.Join(*out, "access.log.gz"))
	for _, n := range nars {
		fmt.Printf("  %s published %s (%s)\n", n.info.StorePath, n.published.Format(time.DateOnly), n.info.URL)
	}
}

func readCache(dir string) ([]nar, error) {
	infos, err := nixcache.NarInfosInDir(dir)
	if err != nil {
		return nil, err
	}
	var nars []nar
	for _, ni := range infos {
		nars = append(nars, nar{info: ni})
	}
	// Store path names carry the versions.
	slices.SortFunc(nars, func(a, b nar) int {
		return strings.Compare(filepath.Base(a.info.StorePath)[33:], filepath.Base(b.info.StorePath)[33:])
	})
	return nars, nil
}

// copyCache copies narinfos, nix-cache-info and NARs, and dates each NAR
// file by its publication, as an upload would have.
func copyCache(src, dst string, nars []nar) error {
	if err := os.MkdirAll(filepath.Join(dst, "nar"), 0o755); err != nil {
		return err
	}
	files := []string{"nix-cache-info"}
	for _, n := range nars {
		files = append(files, n.info.HashPart()+".narinfo", n.info.URL)
	}
	for _, f := range files {
		if err := copyFile(filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
			return err
		}
	}
	for _, n := range nars {
		if err := os.Chtimes(filepath.Join(dst, n.info.URL), n.published, n.published); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

type client struct{ ip, agent string }

type logWriter struct {
	w      *bufio.Writer
	format string
	rng    *rand.Rand
	lines  int
}

func (l *logWriter) write(t time.Time, c client, method, path string, status int, bytes int64) {
	l.lines++
	size := fmt.Sprint(bytes)
	if l.format == "s3" {
		if bytes == 0 {
			size = "-"
		}
		key := strings.TrimPrefix(path, "/")
		op := "REST." + method + ".OBJECT"
		errCode := "-"
		if status == 404 {
			errCode = "NoSuchKey"
		}
		fmt.Fprintf(l.w, "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be nix-cache [%s] %s - %016X %s %s \"%s /%s HTTP/1.1\" %d %s %s %d %d %d \"-\" \"%s\" - hostid= SigV4 ECDHE-RSA-AES128-GCM-SHA256 QueryString nix-cache.s3.amazonaws.com TLSv1.3 - -\n",
			t.Format("02/Jan/2006:15:04:05 -0700"), c.ip, l.rng.Uint64(), op, key, method, key, status, errCode, size, bytes, 20+l.rng.IntN(200), 10+l.rng.IntN(20), c.agent)
		return
	}
	fmt.Fprintf(l.w, "%s - - [%s] \"%s %s HTTP/1.1\" %d %s \"-\" \"%s\"\n",
		c.ip, t.Format("02/Jan/2006:15:04:05 -0700"), method, path, status, size, c.agent)
}

func writeLog(path string, nars []nar, end time.Time, days int, perDay float64, format string, rng *rand.Rand) (int, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	l := &logWriter{w: bufio.NewWriterSize(zw, 1<<20), format: format, rng: rng}

	clients := make([]client, 400)
	for i := range clients {
		agent := fmt.Sprintf("curl/8.%d.0 Nix/2.%d.%d", 4+rng.IntN(8), 18+rng.IntN(8), rng.IntN(4))
		if rng.IntN(10) < 3 {
			clients[i] = client{fmt.Sprintf("2001:db8:%x::%x", rng.IntN(0xffff), 1+rng.IntN(0xfff)), agent}
		} else {
			clients[i] = client{fmt.Sprintf("198.51.%d.%d", rng.IntN(256), 1+rng.IntN(254)), agent}
		}
	}
	start := end.Add(-time.Duration(days) * 24 * time.Hour)
	// A CI fleet pinned to the second-oldest version wakes up once, for
	// twenty minutes at twenty times the usual rate.
	burstAt := start.Add(time.Duration(rng.Int64N(int64(days)*24)) * time.Hour)
	burstNAR := min(1, len(nars)-1)
	perMinute := perDay / 1440
	type event struct {
		sec int
		fn  func(t time.Time)
	}
	var evs []event
	for m := start; m.Before(end); m = m.Add(time.Minute) {
		// Busiest in the European and American afternoon, quietest at night.
		hour := float64(m.Hour()) + float64(m.Minute())/60
		rate := perMinute * (1 + 0.7*math.Sin(2*math.Pi*(hour-9)/24))
		inBurst := !m.Before(burstAt) && m.Before(burstAt.Add(20*time.Minute))
		var published []int
		for i, n := range nars {
			if !n.published.After(m) {
				published = append(published, i)
			}
		}
		evs = evs[:0]
		fetch := func(i int) {
			n := nars[i].info
			c := clients[rng.IntN(len(clients))]
			evs = append(evs, event{rng.IntN(59), func(t time.Time) {
				l.write(t, c, "GET", "/"+n.HashPart()+".narinfo", 200, int64(len(n.Raw)))
				size := int64(n.FileSize)
				switch r := rng.IntN(100); {
				case r < 2: // a resumed download
					from := rng.Int64N(size)
					l.write(t.Add(time.Second), c, "GET", "/"+n.URL, 206, size-from)
				case r < 3: // the client gave up
					l.write(t.Add(time.Second), c, "GET", "/"+n.URL, 200, rng.Int64N(size))
				default:
					l.write(t.Add(time.Second), c, "GET", "/"+n.URL, 200, size)
				}
			}})
		}
		if len(published) > 0 {
			for range poisson(rng, rate) {
				// Newer versions are more popular: weight 2^rank among the published.
				w := rng.Float64() * (math.Exp2(float64(len(published))) - 1)
				k := len(published) - 1
				for k > 0 && w < math.Exp2(float64(k))-1 {
					k--
				}
				fetch(published[k])
			}
			if inBurst && burstNAR < len(published) {
				for range poisson(rng, 20*perMinute) {
					fetch(published[burstNAR])
				}
			}
		}
		for range poisson(rng, 1.5*rate) { // narinfo misses: paths this cache never built
			c := clients[rng.IntN(len(clients))]
			hp := randomHashPart(rng)
			evs = append(evs, event{rng.IntN(60), func(t time.Time) { l.write(t, c, "GET", "/"+hp+".narinfo", 404, 0) }})
		}
		for range poisson(rng, 0.3*rate) {
			c := clients[rng.IntN(len(clients))]
			evs = append(evs, event{rng.IntN(60), func(t time.Time) { l.write(t, c, "GET", "/nix-cache-info", 200, 21) }})
		}
		for range poisson(rng, 0.002*rate) { // a NAR whose narinfo a client cached before it was deleted
			c := clients[rng.IntN(len(clients))]
			hp := randomHashPart(rng)
			evs = append(evs, event{rng.IntN(60), func(t time.Time) { l.write(t, c, "GET", "/nar/"+hp+".nar.xz", 404, 0) }})
		}
		for range poisson(rng, 0.01) { // scanners
			evs = append(evs, event{rng.IntN(60), func(t time.Time) {
				l.write(t, client{"203.0.113.7", "Mozilla/5.0 (compatible; scanner)"}, "GET", "/wp-login.php?x=1", 404, 153)
			}})
		}
		if rng.IntN(20000) == 0 && format == "combined" { // a line cut short by a full disk
			evs = append(evs, event{59, func(t time.Time) {
				l.lines++
				fmt.Fprintf(l.w, "%s - - [%s] \"GET /nar/0", clients[0].ip, t.Format("02/Jan/2006:15:04:05 -0700"))
				fmt.Fprintln(l.w)
			}})
		}
		slices.SortStableFunc(evs, func(a, b event) int { return a.sec - b.sec })
		for _, e := range evs {
			e.fn(m.Add(time.Duration(e.sec) * time.Second))
		}
	}
	if err := l.w.Flush(); err != nil {
		return 0, err
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	return l.lines, f.Close()
}

// poisson draws a Poisson-distributed count (Knuth's method; the rates
// here are small).
func poisson(rng *rand.Rand, lambda float64) int {
	if lambda <= 0 {
		return 0
	}
	if lambda > 30 {
		return max(0, int(math.Round(lambda+math.Sqrt(lambda)*rng.NormFloat64())))
	}
	l, k, p := math.Exp(-lambda), 0, 1.0
	for {
		p *= rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

func randomHashPart(rng *rand.Rand) string {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	b := make([]byte, 32)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return string(b)
}
