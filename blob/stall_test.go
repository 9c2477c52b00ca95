package blob_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
)

func TestStallTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		switch r.URL.Path {
		case "/whole":
			w.Header().Set("Content-Length", strconv.Itoa(1<<20)) // more than the buffers between
			_, _ = w.Write(make([]byte, 1<<20))
		case "/stalls":
			_, _ = w.Write(make([]byte, 100))
			w.(http.Flusher).Flush()
			select { // stops sending, keeps the connection open
			case <-release:
			case <-r.Context().Done():
			}
		case "/trickles":
			for range 10 { // slow but never silent for long
				_, _ = w.Write(make([]byte, 100))
				w.(http.Flusher).Flush()
				time.Sleep(5 * time.Millisecond)
			}
		}
	}))
	defer srv.Close()
	defer close(release)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	// The idle bound is generous next to the trickle's pauses, so only a real stall
	// trips it, however slow the machine.
	client := &http.Client{Transport: blob.StallTimeout(tr, 2*time.Second)}
	b, err := blob.Open(srv.URL, client)
	if err != nil {
		t.Fatal(err)
	}
	// A reader slower than the bound between its Reads is not a stalled server.
	t.Run("slow reader", func(t *testing.T) {
		quick := &http.Client{Transport: blob.StallTimeout(tr, 100*time.Millisecond)}
		resp, err := quick.Get(srv.URL + "/whole")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got []byte
		buf := make([]byte, 64<<10)
		for {
			n, err := resp.Body.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("after %d bytes: %v", len(got), err)
			}
			time.Sleep(120 * time.Millisecond) // busy elsewhere, longer than the bound
		}
		if len(got) != 1<<20 {
			t.Fatalf("read %d bytes", len(got))
		}
	})
	for _, tc := range []struct {
		key     string
		stalled bool
	}{
		{"trickles", false},
		{"stalls", true},
	} {
		t.Run(tc.key, func(t *testing.T) {
			rc, err := b.Open(context.Background(), tc.key)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if tc.stalled {
				if !errors.Is(err, blob.ErrStalled) {
					t.Fatalf("read %d bytes, err %v; want ErrStalled", len(got), err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, make([]byte, 1000)) {
				t.Fatalf("read %d bytes, err %v", len(got), err)
			}
		})
	}
}
