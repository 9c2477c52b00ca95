package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/internal/cachetest"
)

// nginxBinary finds Debian's nginx, skipping the test without it unless
// SHOAL_E2E=1 says nothing may be skipped.
func nginxBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	if os.Getenv("SHOAL_E2E") == "1" {
		t.Fatal("SHOAL_E2E=1 but nginx is not installed (./test.sh installs it)")
	}
	t.Skip("nginx is not installed")
	return ""
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// A real nginx serves a binary cache and writes its access log; the
// analysis must read every line of it and count exactly the bytes the
// clients received.
func TestAnalyzeLogsOfRealNginx(t *testing.T) {
	nginx := nginxBinary(t)
	cache := cachetest.New(t, "nginx-logs-1")
	old := cache.Add(t, cachetest.HashPart("old"), "old-1.0", bytes.Repeat([]byte("old "), 5000), "none")
	young := cache.Add(t, cachetest.HashPart("young"), "young-2.0", bytes.Repeat([]byte("young "), 7000), "zstd")
	for ni, age := range map[string]time.Duration{old.URL: 100 * 24 * time.Hour, young.URL: 24 * time.Hour} {
		at := time.Now().Add(-age)
		if err := os.Chtimes(filepath.Join(cache.Dir, ni), at, at); err != nil {
			t.Fatal(err)
		}
	}

	prefix := t.TempDir()
	port := freePort(t)
	listen := fmt.Sprintf("listen 127.0.0.1:%d;", port)
	ipv6 := false
	if l, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		l.Close()
		ipv6 = true
		listen += fmt.Sprintf(" listen [::1]:%d;", port)
	}
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
  access_log %[1]s/access.log combined;
  client_body_temp_path %[1]s/body; proxy_temp_path %[1]s/proxy; fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi; scgi_temp_path %[1]s/scgi;
  types { text/x-nix-narinfo narinfo; }
  default_type application/octet-stream;
  server { %[2]s root %[3]s; }
}
`, prefix, listen, cache.Dir)
	if err := os.WriteFile(filepath.Join(prefix, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nginx, "-p", prefix, "-c", filepath.Join(prefix, "nginx.conf"), "-e", filepath.Join(prefix, "error.log"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	defer stop()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(prefix, "error.log"))
			t.Fatalf("nginx did not start: %v\n%s\n%s", err, stderr.String(), log)
		}
		time.Sleep(20 * time.Millisecond)
	}

	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	var requests int
	var narReqs, narBytes, oldReqs, oldBytes int64
	do := func(method, url string, header map[string]string, wantStatus int) int64 {
		t.Helper()
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != wantStatus {
			t.Fatalf("%s %s: %s, %v; want %d", method, url, resp.Status, err, wantStatus)
		}
		requests++
		return n
	}
	agent := map[string]string{"User-Agent": `curl/8.7.1 Nix/2.24.9 "quoted" (x86_64 linux)`}
	for i := range 3 {
		for _, ni := range []struct {
			hp, url string
			old     bool
		}{{old.HashPart(), old.URL, true}, {young.HashPart(), young.URL, false}} {
			do("GET", base+"/"+ni.hp+".narinfo", agent, 200)
			got := do("GET", base+"/"+ni.url, agent, 200)
			got += do("GET", base+"/"+ni.url+"?attempt="+strconv.Itoa(i), map[string]string{"Range": "bytes=10-109"}, 206)
			got += do("HEAD", base+"/"+ni.url, nil, 200)
			narReqs += 3
			narBytes += got
			if ni.old {
				oldReqs += 3
				oldBytes += got
			}
		}
	}
	do("GET", base+"/"+cachetest.HashPart("missing")+".narinfo", agent, 404)
	do("GET", base+"/nar/missing.nar.xz", map[string]string{"Referer": "https://example.org/a page?q=\"x\""}, 404)
	if ipv6 {
		narBytes += do("GET", fmt.Sprintf("http://[::1]:%d/%s", port, young.URL), agent, 200)
		narReqs++
	}
	// A TLS client on the plain port: nginx logs the bytes it got, escaped.
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("\x16\x03\x01\x00\xf4\x01 \"odd\"\r\n\r\n"))
	io.Copy(io.Discard, c)
	c.Close()
	requests++
	// nginx logs a request after its connection is done with, which the
	// client may see first: wait for every line before stopping it.
	var log []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		log, err = os.ReadFile(filepath.Join(prefix, "access.log"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(string(log), "\n") >= requests || time.Now().After(deadline) {
			break
		}
	}
	stop()
	if lines := strings.Count(string(log), "\n"); lines != requests {
		t.Fatalf("nginx logged %d lines for %d requests:\n%s", lines, requests, log)
	}
	out := t.TempDir()
	app := newApp()
	var table bytes.Buffer
	app.Writer = &table
	if err := app.Run([]string{"shoal", "--log-level", "warn", "analyze", "logs", "--format", "combined", "--cache", cache.Dir, "--older-than", "30d", "--out", out, filepath.Join(prefix, "access.log")}); err != nil {
		t.Fatal(err)
	}
	row := readCSV(t, filepath.Join(out, "summary.csv"))[1]
	want := []string{"older than 30d", "2592000", "cache", fmt.Sprint(narReqs), fmt.Sprint(narBytes), "1", fmt.Sprint(oldReqs), fmt.Sprint(oldBytes)}
	if !slicesEqual(row[:len(want)], want) {
		t.Errorf("summary %v, want %v\n%s\n%s", row, want, table.String(), log)
	}
	for _, s := range []string{fmt.Sprintf("1 log files, %d requests", requests), ", 0 malformed lines", old.StorePath, "other /nar/ requests: 1", "1 misses"} {
		if !strings.Contains(table.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, table.String())
		}
	}
}

func slicesEqual(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") }
