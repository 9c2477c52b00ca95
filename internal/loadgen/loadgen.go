// Package loadgen drives many concurrent NAR requests at a binary-cache-like HTTP
// server and measures what a CDN edge would see: NAR throughput, latency percentiles
// and status codes. It backs internal/cmd/serve-load, the load test of `shoal serve`, and can
// write what it requested as an nginx "combined" access log, a realistic input for
// `shoal analyze logs`.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shoal-nix/shoal/nixcache"
)

// Target is one NAR a client may ask for.
type Target struct {
	Path        string // URL path, e.g. /nar/<hash>.nar.xz
	NarSize     int64
	Compression string
}

// TargetsFromCache reads every narinfo of a binary cache directory and returns its NARs,
// sorted by path so that a seeded run picks the same sequence every time.
func TargetsFromCache(dir string) ([]Target, error) {
	infos, err := nixcache.NarInfosInDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Target
	for _, ni := range infos {
		out = append(out, Target{Path: "/" + ni.URL, NarSize: int64(ni.NarSize), Compression: ni.EffectiveCompression()})
	}
	slices.SortFunc(out, func(a, b Target) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

// Config is one load run.
type Config struct {
	BaseURL     string
	Targets     []Target
	Concurrency int
	Requests    int     // total requests
	Zipf        float64 // > 1: popularity skew (hot NARs asked for more often); 0: uniform
	Seed        uint64
	Client      *http.Client
	// AccessLog, when set, receives one nginx combined line per request.
	AccessLog io.Writer
	// ClientAddr is the remote address written to the access log.
	ClientAddr string
}

// Result sums up a run.
type Result struct {
	Requests  int
	ByStatus  map[int]int
	Errors    int   // transport errors and bodies cut short
	NarBytes  int64 // NarSize of the NARs received whole with status 200
	WireBytes int64 // body bytes received
	Elapsed   time.Duration
	Latencies []time.Duration // sorted, per request, until the last byte
}

// Percentile returns the latency below which the fraction p of requests finished.
func (r *Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(p * float64(len(r.Latencies)-1))
	return r.Latencies[i]
}

// NarMBps is NAR throughput in MB/s (10^6 bytes).
func (r *Result) NarMBps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.NarBytes) / 1e6 / r.Elapsed.Seconds()
}

// String formats the result for a terminal.
func (r *Result) String() string {
	return fmt.Sprintf("%d requests in %s, statuses %v, %d errors: %.1f MB/s of NAR (%.1f MB/s on the wire), latency p50 %s p99 %s max %s",
		r.Requests, r.Elapsed.Round(time.Millisecond), r.ByStatus, r.Errors, r.NarMBps(),
		float64(r.WireBytes)/1e6/r.Elapsed.Seconds(), r.Percentile(0.5).Round(time.Microsecond),
		r.Percentile(0.99).Round(time.Microsecond), r.Percentile(1).Round(time.Microsecond))
}

// Run sends cfg.Requests requests from cfg.Concurrency clients and waits for them all.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if len(cfg.Targets) == 0 || cfg.Concurrency < 1 || cfg.Requests < 1 {
		return nil, errors.New("loadgen: need targets, concurrency and requests")
	}
	client := cfg.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Concurrency, DisableCompression: true}}
	}
	// The sequence of targets is drawn up front from the seed, so two runs (a baseline
	// and shoal serve) ask for exactly the same NARs in the same order.
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5eed))
	seq := make([]int, cfg.Requests)
	var zipf *rand.Zipf
	if cfg.Zipf > 1 {
		zipf = rand.NewZipf(rng, cfg.Zipf, 1, uint64(len(cfg.Targets)-1))
	}
	for i := range seq {
		if zipf != nil {
			seq[i] = int(zipf.Uint64())
		} else {
			seq[i] = rng.IntN(len(cfg.Targets))
		}
	}
	res := &Result{ByStatus: map[int]int{}}
	var mu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t := cfg.Targets[seq[i]]
				one := fetch(ctx, client, cfg.BaseURL, t)
				mu.Lock()
				res.Requests++
				res.Latencies = append(res.Latencies, one.took)
				res.WireBytes += one.bytes
				if one.err != nil {
					res.Errors++
				} else {
					res.ByStatus[one.status]++
					if one.status == http.StatusOK {
						res.NarBytes += t.NarSize
					}
				}
				if cfg.AccessLog != nil {
					status := one.status
					if one.err != nil && status == 0 {
						status = 499 // nginx's "client closed request"
					}
					fmt.Fprintf(cfg.AccessLog, "%s - - [%s] \"GET %s HTTP/1.1\" %d %d \"-\" \"shoal-serve-load\"\n",
						cmp(cfg.ClientAddr, "127.0.0.1"), one.at.Format("02/Jan/2006:15:04:05 -0700"), t.Path, status, one.bytes)
				}
				mu.Unlock()
			}
		}()
	}
	for i := range seq {
		select {
		case next <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	res.Elapsed = time.Since(start)
	slices.Sort(res.Latencies)
	return res, ctx.Err()
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

type outcome struct {
	at     time.Time
	status int
	bytes  int64
	took   time.Duration
	err    error
}

func fetch(ctx context.Context, client *http.Client, base string, t Target) outcome {
	o := outcome{at: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+t.Path, nil)
	if err != nil {
		o.err = err
		return o
	}
	resp, err := client.Do(req)
	if err != nil {
		o.err, o.took = err, time.Since(o.at)
		return o
	}
	o.status = resp.StatusCode
	o.bytes, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	o.took = time.Since(o.at)
	if err == nil && resp.ContentLength >= 0 && o.bytes != resp.ContentLength {
		err = fmt.Errorf("%s: %d of %d bytes", t.Path, o.bytes, resp.ContentLength)
	}
	o.err = err
	return o
}
