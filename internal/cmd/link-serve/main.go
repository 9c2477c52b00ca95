// Command link-serve serves a directory over HTTP as a distant CDN would: every request
// waits a fixed delay before its response starts, the round trip a client pays per
// request on a long link. Bandwidth is left to the network it runs on (a tc qdisc on a
// veth pair: scripts/measure-upgrades.sh --link). It honours Range, as the packed
// chunk store needs, and writes one line per response to its log:
//
//	START_UNIX_NANO END_UNIX_NANO STATUS BYTES PATH
//
// so a run can be cut into what each request cost and when the link was idle.
//
//	go run ./internal/cmd/link-serve [--listen ADDR] [--delay D] [--log FILE] DIR
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	delay := flag.Duration("delay", 20*time.Millisecond, "wait before each response starts")
	logPath := flag.String("log", "", "append one line per response here (default: none)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: link-serve [--listen ADDR] [--delay D] [--log FILE] DIR")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*listen, *delay, *logPath, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "link-serve:", err)
		os.Exit(1)
	}
}

func run(listen string, delay time.Duration, logPath, dir string) error {
	var log io.Writer = io.Discard
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("opening the log: %w", err)
		}
		defer f.Close()
		log = f
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv := &http.Server{Addr: listen, Handler: delayed(http.FileServer(http.Dir(dir)), delay, &lineLog{w: log})}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving %s on %s: %w", dir, listen, err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutting down: %w", err)
	}
	return nil
}

// lineLog serialises the handlers' log lines.
type lineLog struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineLog) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format, args...)
}

// delayed holds each request for delay before next answers it, and logs what it sent.
func delayed(next http.Handler, delay time.Duration, log *lineLog) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
		cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(cw, r)
		log.printf("%d %d %d %d %s\n", start.UnixNano(), time.Now().UnixNano(), cw.status, cw.n, r.URL.Path)
	})
}

// countingWriter counts the body bytes a handler wrote and keeps its status.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(status int) {
	c.status = status
	c.ResponseWriter.WriteHeader(status)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// ReadFrom keeps http.ServeContent's sendfile path while counting.
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := io.Copy(c.ResponseWriter, r)
	c.n += n
	return n, err
}
