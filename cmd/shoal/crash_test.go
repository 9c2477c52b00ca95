package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// crashNARs makes n NARs that share most of their bytes in pairs, as versions of a
// package do, so both chunk and whole-NAR paths run.
func crashNARs(n int) [][]byte {
	rng := rand.New(rand.NewPCG(42, 7))
	base := make([]byte, 3<<20)
	for i := range base {
		base[i] = byte(rng.Uint32())
	}
	nars := make([][]byte, n)
	for i := range nars {
		nar := bytes.Clone(base[:(1<<20)+rng.IntN(2<<20)])
		// Each NAR changes a few regions and gets its own tail.
		for range 4 {
			off := rng.IntN(len(nar) - 4096)
			for j := range 4096 {
				nar[off+j] = byte(rng.Uint32())
			}
		}
		tail := make([]byte, 256<<10)
		for j := range tail {
			tail[j] = byte(rng.Uint32())
		}
		nars[i] = append(nar, tail...)
	}
	return nars
}

// TestSIGKILLLoop kills the real daemon binary with SIGKILL at random moments during
// concurrent NAR downloads, SHOAL_CRASH_KILLS times (10 by default), restarting it
// each time on the same state directory under a budget smaller than the workload.
// Afterwards `shoal verify` must find the cache clean and every NAR served must match
// its NarHash.
func TestSIGKILLLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the daemon binary")
	}
	kills := 10
	if v := os.Getenv("SHOAL_CRASH_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("SHOAL_CRASH_KILLS=%q: want a positive count", v)
		}
		kills = n
	}
	bin := filepath.Join(t.TempDir(), "shoal")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building shoal: %v\n%s", err, out)
	}

	// A signed cache of 24 NARs (about 70 MiB, 20 MiB of distinct chunks, more than
	// the budget), half of them published as chunks.
	cache := cachetest.New(t, "crash-test-1")
	type nar struct {
		hashPart string
		ni       *nixcache.NarInfo
	}
	var nars []nar
	for i, data := range crashNARs(24) {
		hp := cachetest.HashPart(fmt.Sprint("crash", i))
		nars = append(nars, nar{hp, cache.Add(t, hp, fmt.Sprintf("pkg%d-1.%d", i%6, i), data, "zstd")})
	}
	storeDir := t.TempDir()
	src, err := blob.Open("file://"+cache.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := chunkstore.Open("file://"+storeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := nixcache.ParseKeyring([]string{cache.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, publish.Options{Params: chunk.DefaultParams(), Jobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	var published []string
	for i := 0; i < len(nars); i += 2 {
		published = append(published, nars[i].hashPart)
	}
	if _, err := pub.Run(context.Background(), published); err != nil {
		t.Fatal(err)
	}
	pub.Close()

	stateDir := t.TempDir()
	const budget = 16 << 20
	var lastLog *bytes.Buffer
	start := func() (*exec.Cmd, string) {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		cmd := exec.Command(bin, "--log-level", "warn", "daemon", "--listen", addr,
			"--store", "file://"+storeDir, "--upstream", "file://"+cache.Dir,
			"--trusted-public-key", cache.PublicKey, "--state-dir", stateDir,
			"--cache-size", strconv.Itoa(budget))
		stderr := &bytes.Buffer{}
		lastLog = stderr
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			resp, err := http.Get("http://" + addr + "/nix-cache-info")
			if err == nil {
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("daemon did not start: %v\n%s", err, stderr.String())
			}
		}
		return cmd, addr
	}
	// fetch substitutes one NAR the way Nix does (narinfo, then NAR) and checks it.
	fetch := func(ctx context.Context, addr string, n nar) error {
		get := func(path string) ([]byte, error) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return nil, err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
			}
			return io.ReadAll(resp.Body)
		}
		if _, err := get("/" + n.hashPart + ".narinfo"); err != nil {
			return err
		}
		body, err := get("/nar/" + manifest.Key(n.ni.NarHash) + ".nar")
		if err != nil {
			return err
		}
		if sha256.Sum256(body) != n.ni.NarHash || uint64(len(body)) != n.ni.NarSize {
			return fmt.Errorf("NAR of %s: %d bytes that do not match its NarHash", n.ni.StorePath, len(body))
		}
		return nil
	}

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var completed, interrupted int
	for k := range kills {
		cmd, addr := start()
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var mu sync.Mutex
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; ctx.Err() == nil; i = (i + 4) % len(nars) {
					err := fetch(ctx, addr, nars[(i+k*5)%len(nars)])
					mu.Lock()
					if err == nil {
						completed++
					} else {
						interrupted++
					}
					mu.Unlock()
					// A wrong body is the one failure a kill cannot explain.
					if err != nil && bytes.Contains([]byte(err.Error()), []byte("do not match")) {
						t.Error(err)
					}
				}
			}()
		}
		time.Sleep(time.Duration(50+rng.IntN(700)) * time.Millisecond)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		cancel()
		wg.Wait()
	}
	t.Logf("%d SIGKILLs; %d NARs completed and checked between them, %d downloads cut off", kills, completed, interrupted)

	out, err := exec.Command(bin, "verify", "--state-dir", stateDir).CombinedOutput()
	t.Logf("shoal verify: %s", bytes.TrimSpace(out))
	if err != nil {
		t.Fatalf("shoal verify after %d kills: %v", kills, err)
	}
	cmd, addr := start()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	defer stop()
	for _, n := range nars {
		if err := fetch(context.Background(), addr, n); err != nil {
			t.Errorf("after %d kills: %v", kills, err)
		}
	}
	resp, err := http.Get("http://" + addr + "/shoal/status")
	if err != nil {
		t.Fatal(err)
	}
	status, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fi, err := os.Stat(filepath.Join(stateDir, "cache.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cache file %d bytes against a budget of %d after serving %d MiB of NARs; status %s", fi.Size(), budget, 70, bytes.TrimSpace(status))
	stop() // its log is complete only once it has exited
	if t.Failed() {
		t.Logf("daemon log:\n%s", lastLog.String())
	}
	// The budget is kept by evicting before each write; the file may pass it by less
	// than one allocation step (budget/64) when free pages are too fragmented.
	if fi.Size() > budget+budget/64 {
		t.Errorf("cache file is %d bytes, budget %d", fi.Size(), budget)
	}
}
