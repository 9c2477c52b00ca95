// Command serve-load is the load test of `shoal serve`: many concurrent clients ask for
// the NARs of a binary cache's narinfos, and it reports NAR throughput, latency
// percentiles and statuses, optionally against a static file server on the same cache
// measured in the same run (the ratio is what to compare between machines). With
// --burst it first sends that many simultaneous first requests for one NAR and reads
// the server's metrics to show they cost one verification. scripts/serve-load.sh runs
// it against a freshly started shoal serve and adds the server's peak RSS.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/shoal-nix/shoal/internal/loadgen"
	"github.com/urfave/cli/v2"
)

func env(flag string) []string {
	return []string{"SHOAL_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := &cli.App{
		Name:  "serve-load",
		Usage: "load-test shoal serve with concurrent NAR requests",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "url", Required: true, Usage: "base URL of the server under test, e.g. http://127.0.0.1:8090", EnvVars: env("url")},
			&cli.StringFlag{Name: "cache", Required: true, Usage: "binary cache `DIR` whose narinfos name the NARs to ask for", EnvVars: env("cache")},
			&cli.IntFlag{Name: "concurrency", Value: 32, Usage: "clients requesting at once", EnvVars: env("concurrency")},
			&cli.IntFlag{Name: "requests", Value: 200, Usage: "requests in total", EnvVars: env("requests")},
			&cli.Float64Flag{Name: "zipf", Value: 1.2, Usage: "popularity skew, > 1 (a few NARs are asked for most); 0: uniform", EnvVars: env("zipf")},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "seed of the request sequence (same seed, same requests)", EnvVars: env("seed")},
			&cli.IntFlag{Name: "burst", Usage: "first send this many simultaneous requests for one NAR not yet asked for and report the server's verifications (needs /metrics)", EnvVars: env("burst")},
			&cli.BoolFlag{Name: "baseline", Usage: "also serve --cache with a static file server here and run the same requests against it (its NAR files must all be present)", EnvVars: env("baseline")},
			&cli.StringFlag{Name: "access-log", Usage: "append an nginx combined access log line per request to `FILE`", EnvVars: env("access-log")},
		},
		Action: run,
	}
	if err := app.RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "serve-load:", err)
		os.Exit(1)
	}
}

func run(c *cli.Context) error {
	ctx := c.Context
	targets, err := loadgen.TargetsFromCache(c.String("cache"))
	if err != nil {
		return err
	}
	base := strings.TrimSuffix(c.String("url"), "/")
	cfg := loadgen.Config{
		BaseURL: base, Targets: targets, Concurrency: c.Int("concurrency"), Requests: c.Int("requests"),
		Zipf: c.Float64("zipf"), Seed: c.Uint64("seed"),
	}
	if f := c.String("access-log"); f != "" {
		log, err := os.OpenFile(f, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer log.Close()
		w := bufio.NewWriter(log)
		defer w.Flush()
		cfg.AccessLog = w
	}
	var narBytes int64
	for _, t := range targets {
		narBytes += t.NarSize
	}
	fmt.Printf("%d NARs (%.1f MB of NAR) from %s, %d requests, %d clients\n", len(targets), float64(narBytes)/1e6, c.String("cache"), cfg.Requests, cfg.Concurrency)
	if n := c.Int("burst"); n > 0 {
		if err := burst(ctx, base, targets[len(targets)-1], n, cfg.AccessLog); err != nil {
			return err
		}
	}
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("server:   %s\n", res)
	if c.Bool("baseline") {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		static := &http.Server{Handler: http.FileServer(http.Dir(c.String("cache")))}
		go static.Serve(ln)
		defer static.Close()
		bcfg := cfg
		bcfg.BaseURL, bcfg.AccessLog = "http://"+ln.Addr().String(), nil
		bres, err := loadgen.Run(ctx, bcfg)
		if err != nil {
			return err
		}
		fmt.Printf("baseline: %s\n", bres)
		fmt.Printf("ratio server/baseline: NAR throughput %.3f, p99 latency %.2f\n", res.NarMBps()/bres.NarMBps(),
			res.Percentile(0.99).Seconds()/bres.Percentile(0.99).Seconds())
	}
	if res.Errors > 0 || res.ByStatus[http.StatusOK] != res.Requests {
		return fmt.Errorf("%d of %d requests did not get a whole 200", res.Requests-res.ByStatus[http.StatusOK], res.Requests)
	}
	return nil
}

// burst sends n simultaneous first requests for t and reports how many verifications
// the server ran for them, from its metrics.
func burst(ctx context.Context, base string, t loadgen.Target, n int, accessLog io.Writer) error {
	before, err := verifications(ctx, base)
	if err != nil {
		return err
	}
	res, err := loadgen.Run(ctx, loadgen.Config{BaseURL: base, Targets: []loadgen.Target{t}, Concurrency: n, Requests: n, AccessLog: accessLog})
	if err != nil {
		return err
	}
	after, err := verifications(ctx, base)
	if err != nil {
		return err
	}
	fmt.Printf("burst:    %d simultaneous first requests for %s (%.1f MB NAR): statuses %v, %d verification(s) on the server, p99 %s\n",
		n, t.Path, float64(t.NarSize)/1e6, res.ByStatus, after-before, res.Percentile(0.99))
	return nil
}

func verifications(ctx context.Context, base string) (int64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "shoal_serve_nar_verifications_total "); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("%s/metrics has no shoal_serve_nar_verifications_total", base)
}
