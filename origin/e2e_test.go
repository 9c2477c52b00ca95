package origin_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/retire"
	"github.com/shoal-nix/shoal/internal/nixtest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/origin"
	"github.com/shoal-nix/shoal/publish"
)

// nginxConf plays the CDN: it serves the main cache directory and sends requests for
// NARs it does not have to shoal serve. This is the snippet docs/serve.md shows.
const nginxConf = `%s
worker_processes 1;
error_log %[2]s/error.log info;
pid %[2]s/nginx.pid;
events { worker_connections 256; }
http {
  access_log %[2]s/access.log combined;
  client_body_temp_path %[2]s/tmp/body;
  proxy_temp_path %[2]s/tmp/proxy;
  fastcgi_temp_path %[2]s/tmp/fastcgi;
  uwsgi_temp_path %[2]s/tmp/uwsgi;
  scgi_temp_path %[2]s/tmp/scgi;
  upstream shoal_serve { server %[4]s; keepalive 16; }
  server {
    listen %[5]s;
    root %[3]s;
    location /nar/ {
      error_page 404 = @shoal;
    }
    location @shoal {
      proxy_pass http://shoal_serve;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`

// startNginx runs nginx in the foreground on a loopback port with its own prefix, until
// the test ends, and returns its URL.
func startNginx(t *testing.T, root, backend string) (url, accessLog string) {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx" // Debian puts it outside a normal user's PATH
		if _, serr := os.Stat(bin); serr != nil {
			if os.Getenv("SHOAL_E2E") == "1" {
				t.Fatalf("SHOAL_E2E=1 but nginx is not installed (Debian package nginx): %v", err)
			}
			t.Skip("nginx is not installed (Debian package nginx)")
		}
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A free port: bind, note it, release it for nginx.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers must read the test's private temporary directories
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, nginxConf, user, dir, root, backend, addr), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-g", "daemon off;")
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting nginx: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx output:\n%s\nerror.log:\n%s", out, log)
		}
	})
	url = "http://" + addr
	for i := 0; ; i++ {
		resp, err := http.Get(url + "/nix-cache-info")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("nginx exited: %v\n%s", err, out)
		case <-time.After(20 * time.Millisecond):
		}
		if i > 500 {
			t.Fatalf("nginx did not answer on %s: %v\n%s", addr, err, out)
		}
	}
	return url, filepath.Join(dir, "access.log")
}

// The whole drop-in: publish a cache, retire the older NARs from it, and a stock Nix
// substitutes every path through nginx, the retired ones through the 404 fallback to
// shoal serve, in both xz and zstd.
func TestNginxFallbackE2E(t *testing.T) {
	env := nixtest.NewEnv(t)
	ctx := context.Background()
	sk, pk := env.GenerateKey(t, "shoal-serve-test-1")
	cacheDir, storeDir := t.TempDir(), t.TempDir()
	paths := map[string]string{}
	for name, files := range map[string]map[string][]byte{
		"xzdemo-1.0":  nixtest.PackageVersion(11, 1, 1<<20),
		"xzdemo-1.1":  nixtest.PackageVersion(11, 2, 1<<20),
		"zstdemo-1.0": nixtest.PackageVersion(12, 1, 1<<20),
		"zstdemo-1.1": nixtest.PackageVersion(12, 2, 1<<20),
	} {
		paths[name] = env.AddPath(t, name, files)
	}
	var all []string
	for _, p := range paths {
		all = append(all, p)
	}
	env.Sign(t, sk, all...)
	env.CopyToCache(t, cacheDir, "xz", paths["xzdemo-1.0"], paths["xzdemo-1.1"])
	env.CopyToCache(t, cacheDir, "zstd", paths["zstdemo-1.0"], paths["zstdemo-1.1"])

	src, _ := blob.Open(cacheDir, nil)
	st, _ := chunkstore.Open(storeDir, nil)
	kr, _ := nixcache.ParseKeyring([]string{pk})
	p, err := publish.New(nixcache.NewBinaryCache(src), st, kr, publish.Options{Params: chunk.DefaultParams(), Jobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	hp := func(name string) string { h, _ := nixcache.ParseHashPart(paths[name]); return h }
	var hps []string
	for name := range paths {
		hps = append(hps, hp(name))
	}
	if _, err := p.Run(ctx, hps); err != nil {
		t.Fatal(err)
	}
	p.Close()

	keep := map[string]bool{hp("xzdemo-1.1"): true, hp("zstdemo-1.1"): true}
	rep, err := retire.Run(ctx, src, st, retire.Options{Keep: func(h string) bool { return keep[h] }, Keys: kr, Apply: true})
	if err != nil || rep.Retired != 2 || rep.Kept != 2 {
		t.Fatalf("retire: %+v, %v", rep, err)
	}
	for _, name := range []string{"xzdemo-1.0", "zstdemo-1.0"} {
		raw, _ := os.ReadFile(filepath.Join(cacheDir, hp(name)+".narinfo"))
		ni, _ := nixcache.ParseNarInfo(raw)
		if _, err := os.Stat(filepath.Join(cacheDir, ni.URL)); !os.IsNotExist(err) {
			t.Fatalf("%s: NAR file still in the cache after retire: %v", name, err)
		}
	}

	srv, err := origin.New(st, origin.Options{Keys: kr, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, ln, 5*time.Second) }()
	t.Cleanup(func() { stop(); <-served; srv.Close() })

	url, accessLog := startNginx(t, cacheDir, ln.Addr().String())
	root := filepath.Join(t.TempDir(), "root")
	if out, err := env.CopyFrom(ctx, url, pk, root, all...); err != nil {
		t.Fatalf("nix copy through nginx: %v\n%s", err, out)
	}
	if out, err := env.Verify(ctx, root, all...); err != nil {
		t.Fatalf("nix store verify: %v\n%s", err, out)
	}
	m := srv.Metrics()
	if n := m.Requests("nar.xz", 200); n != 1 {
		t.Errorf("serve answered %d xz NARs, want the 1 retired", n)
	}
	if n := m.Requests("nar.zst", 200); n != 1 {
		t.Errorf("serve answered %d zstd NARs, want the 1 retired", n)
	}
	log, _ := os.ReadFile(accessLog)
	if c := strings.Count(string(log), "\"GET /nar/"); c != 4 {
		t.Errorf("nginx logged %d NAR requests, want 4:\n%s", c, log)
	}
}
