package blob

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-nix/shoal"
)

// DefaultHTTPClient returns the client used when Open is given none. It
// bounds connecting, waiting for response headers and silence within a body
// (DefaultStallTimeout) but sets no overall timeout, because a NAR body can
// take minutes to stream; callers bound whole transfers with their context.
func DefaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ResponseHeaderTimeout = 60 * time.Second
	// Many small chunk requests are kept in flight against one store.
	t.MaxIdleConnsPerHost = 64
	return &http.Client{Transport: StallTimeout(t, DefaultStallTimeout)}
}

// httpBackend reads objects from a static HTTP server such as a binary cache
// or a CDN in front of a chunk store.
type httpBackend struct {
	base   string // scheme://host[:port][/prefix], no trailing slash
	client *http.Client
}

func newHTTPBackend(u *url.URL, client *http.Client) (*httpBackend, error) {
	if u.Host == "" {
		return nil, fmt.Errorf("blob: URL %q has no host", u.String())
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("blob: URL %q: query parameters are not supported", u.String())
	}
	if u.User != nil {
		return nil, fmt.Errorf("blob: URL for %s: credentials in the URL are not supported", u.Host)
	}
	base := *u
	base.Path = strings.TrimRight(u.Path, "/")
	base.RawPath = ""
	return &httpBackend{base: base.String(), client: client}, nil
}

func (h *httpBackend) String() string { return h.base }

func (h *httpBackend) objectURL(key string) string {
	segs := strings.Split(key, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return h.base + "/" + strings.Join(segs, "/")
}

// isMiss reports the statuses that mean "not here" in the binary-cache
// protocol; S3 and many CDNs answer 403 for absent objects.
func isMiss(code int) bool {
	return code == http.StatusNotFound || code == http.StatusForbidden || code == http.StatusGone
}

func (h *httpBackend) do(ctx context.Context, method, key string, header http.Header) (*http.Response, string, error) {
	if err := ValidateKey(key); err != nil {
		return nil, "", err
	}
	u := h.objectURL(key)
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, u, fmt.Errorf("%s %s: %w", method, u, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, u, fmt.Errorf("%s %s: %w", method, u, err)
	}
	return resp, u, nil
}

// statusError builds the error for a non-2xx response, consuming and
// closing its body. A short excerpt of the body is kept because servers
// often explain themselves there.
func statusError(method, u string, resp *http.Response) error {
	defer resp.Body.Close()
	if isMiss(resp.StatusCode) {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s %s: %s: %w", method, u, resp.Status, shoal.ErrNotFound)
	}
	excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	msg := strings.TrimSpace(strings.ToValidUTF8(string(excerpt), "?"))
	if msg != "" {
		return fmt.Errorf("%s %s: unexpected status %s: %q", method, u, resp.Status, msg)
	}
	return fmt.Errorf("%s %s: unexpected status %s", method, u, resp.Status)
}

func (h *httpBackend) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	resp, u, err := h.do(ctx, http.MethodGet, key, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, statusError(http.MethodGet, u, resp)
	}
	return resp.Body, nil
}

func (h *httpBackend) Exists(ctx context.Context, key string) (bool, error) {
	resp, u, err := h.do(ctx, http.MethodHead, key, nil)
	if err != nil {
		return false, err
	}
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		resp.Body.Close()
		return true, nil
	}
	err = statusError(http.MethodHead, u, resp)
	if isMiss(resp.StatusCode) {
		return false, nil
	}
	return false, err
}

func (h *httpBackend) Put(ctx context.Context, key string, data []byte) error {
	return fmt.Errorf("storing %s in %s: %w", key, h.base, ErrReadOnly)
}

func (h *httpBackend) List(ctx context.Context, prefix string, fn func(key string) error) error {
	return fmt.Errorf("listing %s: %w", h.base, ErrNotSupported)
}

func (h *httpBackend) Stat(ctx context.Context, key string) (Info, error) {
	return Info{}, fmt.Errorf("stat %s in %s: %w", key, h.base, ErrNotSupported)
}

func (h *httpBackend) Touch(ctx context.Context, key string) error {
	return fmt.Errorf("touching %s in %s: %w", key, h.base, ErrReadOnly)
}

func (h *httpBackend) Delete(ctx context.Context, key string) error {
	return fmt.Errorf("deleting %s in %s: %w", key, h.base, ErrReadOnly)
}

// OpenRange sends one GET with a Range header and accepts only a 206 whose
// Content-Range is the range asked for. A server that ignores Range (200) is
// an error rather than a fallback: it would send the whole pack for every
// range, tens of MiB where a few KiB were wanted, and the store's operator
// needs to hear that rather than pay it silently.
func (h *httpBackend) OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if err := checkRange(key, off, n); err != nil {
		return nil, err
	}
	last := off + n - 1
	header := http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, last)}}
	resp, u, err := h.do(ctx, http.MethodGet, key, header)
	if err != nil {
		return nil, err
	}
	what := fmt.Sprintf("GET %s bytes %d-%d", u, off, last)
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusRequestedRangeNotSatisfiable:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s: %w", what, resp.Status, ErrRange)
	case http.StatusOK:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: the server ignored the Range header (200, not 206); serve the store with one that honours ranges", what)
	default:
		return nil, statusError(http.MethodGet, u, resp)
	}
	start, end, err := parseContentRange(resp.Header.Get("Content-Range"))
	if err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// The object may end before the range does; then the server sends less and
	// says so, and the exact reader reports the short body.
	if start != off || end > last {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: server sent bytes %d-%d", what, start, end)
	}
	return newExactReader(resp.Body, n, what), nil
}

// parseContentRange reads "bytes START-END/TOTAL" (TOTAL may be "*").
func parseContentRange(v string) (start, end int64, err error) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, fmt.Errorf("206 with Content-Range %q", v)
	}
	rng, _, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, fmt.Errorf("206 with Content-Range %q", v)
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, fmt.Errorf("206 with Content-Range %q", v)
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, fmt.Errorf("206 with Content-Range %q", v)
	}
	return start, end, nil
}
