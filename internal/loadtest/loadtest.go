// Package loadtest drives a shoal daemon the way a busy Nix machine does: many clients
// at once asking narinfos (hits and misses, HEAD and GET) and fetching NARs in
// parallel. Every answer is checked — a hit must be the path's narinfo, a miss a 404, a
// NAR must hash to its NarHash — so the same driver serves as a correctness test under
// the race detector at a small scale and as a measurement at a large one.
package loadtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
)

// Path is a store path the daemon can serve, as its narinfo describes it.
type Path struct {
	HashPart string
	NarHash  [32]byte
	NarSize  uint64
	// URL and Compression of the NAR file in the binary cache, for Direct runs.
	URL, Compression string
}

// Config says what load to apply.
type Config struct {
	// URL of the daemon, e.g. http://127.0.0.1:37515.
	URL string
	// Paths the daemon's sources hold.
	Paths []Path
	// Clients is how many Nix-like clients run at once (Nix itself keeps up to 25
	// connections and 16 substitution jobs).
	Clients int
	// NarInfoOps is how many narinfo requests each client makes in the storm phase;
	// MissRatio of them ask for paths nobody has, half of all of them are HEAD.
	NarInfoOps int
	MissRatio  float64
	// NarRounds is how many times the whole set of NARs is fetched, spread over the
	// clients, after the first (cold) round.
	NarRounds int
	// Client is the HTTP client; nil gets one with enough idle connections per host.
	Client *http.Client
	// Direct makes URL a plain binary cache instead of a daemon: NARs are fetched at
	// their narinfo URL and decompressed, as Nix does without shoal. It gives a
	// baseline measured the same way.
	Direct bool
}

// Latencies summarises one kind of request.
type Latencies struct {
	Count    int
	P50, P99 time.Duration
}

func summarize(ds []time.Duration) Latencies {
	if len(ds) == 0 {
		return Latencies{}
	}
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	return Latencies{Count: len(ds), P50: at(0.50), P99: at(0.99)}
}

func (l Latencies) String() string {
	return fmt.Sprintf("%d requests, p50 %v, p99 %v", l.Count, l.P50.Round(time.Microsecond), l.P99.Round(time.Microsecond))
}

// Phase is what one phase of the run moved and how fast.
type Phase struct {
	Elapsed  time.Duration
	Requests int
	NARs     int
	NARBytes int64
}

// NARMBps is the NAR bytes delivered per second, in MB (10^6 bytes).
func (p Phase) NARMBps() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.NARBytes) / 1e6 / p.Elapsed.Seconds()
}

// RequestsPerSecond is the phase's request throughput.
func (p Phase) RequestsPerSecond() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Requests) / p.Elapsed.Seconds()
}

// Report is the outcome of a run. A run with any wrong answer returns an error too.
type Report struct {
	Cold, Storm, Warm Phase
	NarInfoHit        Latencies
	NarInfoMiss       Latencies
	NAR               Latencies
}

func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "first round of NARs (cold: a daemon fetches them from its sources): %d NARs, %.1f MB in %v: %.1f MB/s\n",
		r.Cold.NARs, float64(r.Cold.NARBytes)/1e6, r.Cold.Elapsed.Round(time.Millisecond), r.Cold.NARMBps())
	fmt.Fprintf(&b, "narinfo storm: %d requests in %v: %.0f requests/s\n",
		r.Storm.Requests, r.Storm.Elapsed.Round(time.Millisecond), r.Storm.RequestsPerSecond())
	fmt.Fprintf(&b, "  narinfo hits:   %v\n", r.NarInfoHit)
	fmt.Fprintf(&b, "  narinfo misses: %v\n", r.NarInfoMiss)
	fmt.Fprintf(&b, "later rounds of NARs (warm: a daemon serves them from its local cache): %d NARs, %.1f MB in %v: %.1f MB/s\n",
		r.Warm.NARs, float64(r.Warm.NARBytes)/1e6, r.Warm.Elapsed.Round(time.Millisecond), r.Warm.NARMBps())
	fmt.Fprintf(&b, "  NAR requests:   %v\n", r.NAR)
	return b.String()
}

// ReadCache lists the paths of a binary cache directory from its narinfos.
func ReadCache(dir string) ([]Path, error) {
	infos, err := nixcache.NarInfosInDir(dir)
	if err != nil {
		return nil, err
	}
	var paths []Path
	for _, ni := range infos {
		paths = append(paths, Path{HashPart: ni.HashPart(), NarHash: ni.NarHash, NarSize: ni.NarSize, URL: ni.URL, Compression: ni.EffectiveCompression()})
	}
	return paths, nil
}

// missHashPart makes a store path hash part that no cache holds.
func missHashPart() string {
	var b [20]byte
	_, _ = rand.Read(b[:])
	return nixbase32.EncodeToString(b[:])
}

type recorder struct {
	mu                sync.Mutex
	hits, misses, nar []time.Duration
	requests, nars    int
	narBytes          int64
	errs              []error
}

func (r *recorder) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) < 10 {
		r.errs = append(r.errs, err)
	}
}

func (r *recorder) phase(elapsed time.Duration) Phase {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Phase{Elapsed: elapsed, Requests: r.requests, NARs: r.nars, NARBytes: r.narBytes}
}

func (r *recorder) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return errors.Join(r.errs...)
}

// Run applies the load in three phases: every NAR once (cold: the daemon fetches from
// its sources), a narinfo storm of hits and misses, then NarRounds more rounds of every
// NAR (warm: served from the local cache). It fails on the first phase with a wrong
// answer.
func Run(ctx context.Context, cfg Config) (Report, error) {
	if cfg.Clients <= 0 || len(cfg.Paths) == 0 {
		return Report{}, errors.New("loadtest: need clients and paths")
	}
	client := cfg.Client
	if client == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = cfg.Clients
		client = &http.Client{Transport: t}
		defer t.CloseIdleConnections()
	}
	d := &driver{cfg: cfg, client: client}
	var rep Report
	var err error
	if rep.Cold, _, err = d.nars(ctx, 1); err != nil {
		return rep, fmt.Errorf("cold NARs: %w", err)
	}
	var rec *recorder
	if rep.Storm, rec, err = d.storm(ctx); err != nil {
		return rep, fmt.Errorf("narinfo storm: %w", err)
	}
	rep.NarInfoHit, rep.NarInfoMiss = summarize(rec.hits), summarize(rec.misses)
	if cfg.NarRounds > 0 {
		if rep.Warm, rec, err = d.nars(ctx, cfg.NarRounds); err != nil {
			return rep, fmt.Errorf("warm NARs: %w", err)
		}
		rep.NAR = summarize(rec.nar)
	}
	return rep, nil
}

type driver struct {
	cfg    Config
	client *http.Client
}

// parallel runs work on Clients goroutines, each with its own index.
func (d *driver) parallel(work func(client int)) time.Duration {
	began := time.Now()
	var wg sync.WaitGroup
	for c := range d.cfg.Clients {
		wg.Go(func() { work(c) })
	}
	wg.Wait()
	return time.Since(began)
}

// nars fetches every path's narinfo and NAR rounds times, the jobs shared among the
// clients as Nix shares substitutions among its jobs.
func (d *driver) nars(ctx context.Context, rounds int) (Phase, *recorder, error) {
	jobs := make(chan Path)
	go func() {
		defer close(jobs)
		for range rounds {
			for _, p := range d.cfg.Paths {
				select {
				case jobs <- p:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	rec := &recorder{}
	elapsed := d.parallel(func(int) {
		for p := range jobs {
			if err := d.narInfo(ctx, rec, p.HashPart, http.MethodGet, true); err != nil {
				rec.fail(err)
				continue
			}
			if err := d.nar(ctx, rec, p); err != nil {
				rec.fail(err)
			}
		}
	})
	return rec.phase(elapsed), rec, rec.err()
}

// storm sends narinfo requests only: hits for known paths, misses for random ones,
// GET and HEAD alike.
func (d *driver) storm(ctx context.Context) (Phase, *recorder, error) {
	rec := &recorder{}
	elapsed := d.parallel(func(c int) {
		rng := mrand.New(mrand.NewPCG(uint64(c), 7))
		for range d.cfg.NarInfoOps {
			if ctx.Err() != nil {
				return
			}
			method := http.MethodGet
			if rng.IntN(2) == 0 {
				method = http.MethodHead
			}
			var err error
			if rng.Float64() < d.cfg.MissRatio {
				err = d.narInfo(ctx, rec, missHashPart(), method, false)
			} else {
				err = d.narInfo(ctx, rec, d.cfg.Paths[rng.IntN(len(d.cfg.Paths))].HashPart, method, true)
			}
			if err != nil {
				rec.fail(err)
			}
		}
	})
	return rec.phase(elapsed), rec, rec.err()
}

func (d *driver) get(ctx context.Context, method, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, err
	}
	return d.client.Do(req)
}

// narInfo asks for one narinfo and checks the answer: a hit is 200 with the path's
// narinfo (GET) or its length (HEAD), a miss is 404.
func (d *driver) narInfo(ctx context.Context, rec *recorder, hashPart, method string, hit bool) error {
	began := time.Now()
	resp, err := d.get(ctx, method, d.cfg.URL+"/"+hashPart+".narinfo")
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(began)
	if err != nil {
		return fmt.Errorf("%s narinfo %s: %w", method, hashPart, err)
	}
	switch {
	case !hit && resp.StatusCode != http.StatusNotFound:
		return fmt.Errorf("%s narinfo %s (a miss): status %d, want 404", method, hashPart, resp.StatusCode)
	case hit && resp.StatusCode != http.StatusOK:
		return fmt.Errorf("%s narinfo %s: status %d, want 200", method, hashPart, resp.StatusCode)
	case hit && method == http.MethodGet:
		ni, err := nixcache.ParseNarInfo(body)
		if err != nil {
			return fmt.Errorf("narinfo %s: %w", hashPart, err)
		}
		if ni.HashPart() != hashPart {
			return fmt.Errorf("narinfo %s describes %s", hashPart, ni.StorePath)
		}
	case hit && resp.ContentLength <= 0:
		return fmt.Errorf("HEAD narinfo %s: Content-Length %d", hashPart, resp.ContentLength)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.requests++
	if hit {
		rec.hits = append(rec.hits, took)
	} else {
		rec.misses = append(rec.misses, took)
	}
	return nil
}

// nar fetches one NAR and checks it against its NarHash and NarSize.
func (d *driver) nar(ctx context.Context, rec *recorder, p Path) error {
	began := time.Now()
	url, compression := d.cfg.URL+"/nar/"+manifest.Key(p.NarHash)+".nar", "none"
	if d.cfg.Direct {
		url, compression = d.cfg.URL+"/"+p.URL, p.Compression
	}
	resp, err := d.get(ctx, http.MethodGet, url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("NAR of %s: status %d", p.HashPart, resp.StatusCode)
	}
	body, err := nixcache.Decompress(ctx, resp.Body, compression)
	if err != nil {
		return fmt.Errorf("NAR of %s: %w", p.HashPart, err)
	}
	defer body.Close()
	h := sha256.New()
	n, err := io.Copy(h, body)
	if err != nil {
		return fmt.Errorf("NAR of %s: %w after %d bytes", p.HashPart, err, n)
	}
	if uint64(n) != p.NarSize || [32]byte(h.Sum(nil)) != p.NarHash {
		return fmt.Errorf("NAR of %s: %d bytes that do not match its NarHash", p.HashPart, n)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.requests++
	rec.nars++
	rec.narBytes += n
	rec.nar = append(rec.nar, time.Since(began))
	return nil
}
