package blob_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/internal/s3test"
)

// rangeBackends returns, per backend, one that can be read by range and already
// holds data at key: a directory, a real net/http file server over a directory,
// and MinIO.
func rangeBackends(t *testing.T, key string, data []byte) map[string]func(t *testing.T) blob.Backend {
	put := func(t *testing.T, b blob.Backend) {
		if err := b.Put(context.Background(), key, data); err != nil {
			t.Fatal(err)
		}
	}
	return map[string]func(t *testing.T) blob.Backend{
		"file": func(t *testing.T) blob.Backend {
			b, err := blob.Open(t.TempDir(), nil)
			if err != nil {
				t.Fatal(err)
			}
			put(t, b)
			return b
		},
		"http": func(t *testing.T) blob.Backend {
			dir := t.TempDir()
			fb, err := blob.Open(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			put(t, fb)
			srv := httptest.NewServer(http.StripPrefix("/store", http.FileServer(http.Dir(dir))))
			t.Cleanup(srv.Close)
			b, err := blob.Open(srv.URL+"/store", srv.Client())
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
		"s3": func(t *testing.T) blob.Backend {
			srv := s3test.Start(t)
			b, err := blob.Open(srv.URL(srv.Bucket(t, "ranges"), "p"), nil)
			if err != nil {
				t.Fatal(err)
			}
			put(t, b)
			return b
		},
	}
}

func TestOpenRange(t *testing.T) {
	const key = "packs/ab/pack"
	data := make([]byte, 100_000)
	for i := range data {
		data[i] = byte(i * 7 / 3)
	}
	tests := []struct {
		name    string
		key     string
		off, n  int64
		want    []byte
		wantErr error  // errors.Is, checked on open or read
		errText string // or a part of the message
	}{
		{name: "middle", key: key, off: 1000, n: 5000, want: data[1000:6000]},
		{name: "whole", key: key, off: 0, n: int64(len(data)), want: data},
		{name: "last byte", key: key, off: int64(len(data)) - 1, n: 1, want: data[len(data)-1:]},
		{name: "past the end", key: key, off: int64(len(data)) - 10, n: 20, wantErr: io.ErrUnexpectedEOF},
		{name: "starts after the end", key: key, off: int64(len(data)), n: 10, wantErr: blob.ErrRange},
		{name: "absent", key: "packs/ab/absent", off: 0, n: 10, wantErr: shoal.ErrNotFound},
		{name: "empty range", key: key, off: 0, n: 0, errText: "invalid range"},
		{name: "negative offset", key: key, off: -1, n: 10, errText: "invalid range"},
		{name: "bad key", key: "../x", off: 0, n: 10, errText: `".." segment`},
	}
	for name, open := range rangeBackends(t, key, data) {
		t.Run(name, func(t *testing.T) {
			b := open(t)
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					got, err := readRange(b, tc.key, tc.off, tc.n)
					switch {
					case tc.wantErr != nil:
						if !errors.Is(err, tc.wantErr) {
							t.Fatalf("got %d bytes, err %v; want %v", len(got), err, tc.wantErr)
						}
					case tc.errText != "":
						if err == nil || !strings.Contains(err.Error(), tc.errText) {
							t.Fatalf("err %v, want one containing %q", err, tc.errText)
						}
					case err != nil:
						t.Fatal(err)
					case !bytes.Equal(got, tc.want):
						t.Fatalf("got %d bytes, want %d (equal prefix: %v)", len(got), len(tc.want), bytes.HasPrefix(tc.want, got))
					}
				})
			}
		})
	}
}

func readRange(b blob.Backend, key string, off, n int64) ([]byte, error) {
	rc, err := b.OpenRange(context.Background(), key, off, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// TestOpenRangeRefusesBadServers covers HTTP servers that would make a caller cut
// objects out of the wrong bytes: one that ignores Range and sends the whole object,
// and ones that answer 206 for another range or with more or fewer bytes.
func TestOpenRangeRefusesBadServers(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 100)
	tests := []struct {
		name    string
		handler http.HandlerFunc
		errText string
		wantErr error
	}{
		{"ignores Range", func(w http.ResponseWriter, r *http.Request) {
			w.Write(data)
		}, "ignored the Range header", nil},
		{"other range", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-99/%d", len(data)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[:100])
		}, "server sent bytes 0-99", nil},
		{"no Content-Range", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[100:200])
		}, "Content-Range", nil},
		{"short body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 100-199/%d", len(data)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[100:150])
		}, "", io.ErrUnexpectedEOF},
		{"not found", func(w http.ResponseWriter, r *http.Request) {
			http.NotFound(w, r)
		}, "", shoal.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			b, err := blob.Open(srv.URL, srv.Client())
			if err != nil {
				t.Fatal(err)
			}
			got, err := readRange(b, "packs/x", 100, 100)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %q, err %v; want %v", got, err, tc.wantErr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("got %q, err %v; want an error containing %q", got, err, tc.errText)
			}
		})
	}
}
