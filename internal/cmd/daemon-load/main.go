// Command daemon-load measures a shoal daemon under Nix-like load: it serves a binary
// cache directory on loopback as the daemon's only upstream, starts the daemon binary
// with a fresh state directory, drives it with internal/loadtest, and prints
// throughput, narinfo latencies and the daemon's peak RSS (VmHWM), each against a
// baseline: the same load straight at the binary cache, in the same run.
// scripts/daemon-load.sh builds shoal and runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-nix/shoal/internal/loadtest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "daemon-load:", err)
		os.Exit(1)
	}
}

func run() error {
	shoal := flag.String("shoal", "shoal", "the shoal binary to run as the daemon")
	cacheDir := flag.String("cache", "", "binary cache directory (narinfos and nar/) served as the daemon's upstream")
	pk := flag.String("trusted-public-key", "", "the cache's public key, name:base64, or a file holding it")
	clients := flag.Int("clients", 25, "concurrent clients (Nix keeps up to 25 connections)")
	ops := flag.Int("narinfo-ops", 400, "narinfo requests per client in the storm")
	miss := flag.Float64("miss-ratio", 0.3, "share of storm requests for paths nobody has")
	rounds := flag.Int("nar-rounds", 3, "rounds of every NAR from the warm cache")
	flag.Parse()
	if *cacheDir == "" || *pk == "" {
		return errors.New("need -cache and -trusted-public-key")
	}
	key := *pk
	if raw, err := os.ReadFile(key); err == nil {
		key = strings.TrimSpace(string(raw))
	}
	paths, err := loadtest.ReadCache(*cacheDir)
	if err != nil {
		return err
	}

	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = http.Serve(up, http.FileServer(http.Dir(*cacheDir))) }()
	defer up.Close()

	state, err := os.MkdirTemp("", "shoal-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(*shoal, "--log-level", "warn", "daemon", "--listen", addr,
		"--upstream", "http://"+up.Addr().String(), "--trusted-public-key", key,
		"--state-dir", state, "--seed-store", "", "--cache-size", "0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	url := "http://" + addr
	if err := waitReady(url, cmd); err != nil {
		return err
	}

	var total uint64
	for _, p := range paths {
		total += p.NarSize
	}
	fmt.Printf("%d store paths, %.1f MB of NARs; %d clients, %d narinfo requests each (%.0f%% misses), %d warm rounds\n",
		len(paths), float64(total)/1e6, *clients, *ops, *miss*100, *rounds)
	cfg := loadtest.Config{Paths: paths, Clients: *clients, NarInfoOps: *ops, MissRatio: *miss, NarRounds: *rounds}
	// The baseline: the same load straight at the binary cache, NARs decompressed and
	// hashed as Nix does without shoal, in this run and on this machine.
	direct := cfg
	direct.URL, direct.Direct = "http://"+up.Addr().String(), true
	base, err := loadtest.Run(context.Background(), direct)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	fmt.Print("== baseline: the binary cache directly (static file server, NARs decompressed and hashed)\n", base)
	cfg.URL = url
	rep, err := loadtest.Run(context.Background(), cfg)
	if err != nil {
		return err
	}
	fmt.Print("== shoal daemon\n", rep)
	hwm, err := peakRSS(cmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("daemon peak RSS (VmHWM): %s\n", hwm)
	ratio := func(a, b float64) string {
		if b == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	fmt.Printf("ratios daemon/baseline: narinfo hit p50 %s, p99 %s; miss p50 %s, p99 %s; cold NAR MB/s %s; warm NAR MB/s %s\n",
		ratio(float64(rep.NarInfoHit.P50), float64(base.NarInfoHit.P50)), ratio(float64(rep.NarInfoHit.P99), float64(base.NarInfoHit.P99)),
		ratio(float64(rep.NarInfoMiss.P50), float64(base.NarInfoMiss.P50)), ratio(float64(rep.NarInfoMiss.P99), float64(base.NarInfoMiss.P99)),
		ratio(rep.Cold.NARMBps(), base.Cold.NARMBps()), ratio(rep.Warm.NARMBps(), base.Warm.NARMBps()))
	return nil
}

// waitReady polls nix-cache-info until the daemon answers or exits.
func waitReady(url string, cmd *exec.Cmd) error {
	for range 200 {
		resp, err := http.Get(url + "/nix-cache-info")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if cmd.ProcessState != nil {
			return errors.New("the daemon exited")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("the daemon did not answer within 10s")
}

// peakRSS reads a process's high-water resident set size from /proc.
func peakRSS(pid int) (string, error) {
	raw, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "status"))
	if err != nil {
		return "", fmt.Errorf("reading the daemon's peak RSS: %w", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", errors.New("no VmHWM in the daemon's /proc status")
}
