package daemon

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// hostCheck refuses requests that name a host other than this daemon, on every
// route, and admin requests sent by a web page.
//
// A page served from evil.example whose DNS name is rebound to 127.0.0.1 is
// same-origin with the daemon as far as the browser cares, so neither CORS nor the
// admin API's content-type rule stops it; but its requests still carry
// "Host: evil.example:37515". Only names that cannot be rebound are accepted: the
// loopback names, the address the connection arrived at, and the --listen host,
// each with the port the connection arrived at. A browser adds Origin to every
// request a page makes (fetch, forms), and nothing in shoal's own clients does, so
// an admin request with a foreign Origin is refused too.
type hostCheck struct {
	listenHost string // Config.Listen's host part, if it names one
	next       http.Handler
}

func newHostCheck(listen string, next http.Handler) http.Handler {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		host = ""
	}
	return &hostCheck{listenHost: host, next: next}
}

func (h *hostCheck) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.allowed(r, r.Host) {
		http.Error(w, "unknown Host: this daemon answers only to its own address", http.StatusMisdirectedRequest)
		return
	}
	if strings.HasPrefix(r.URL.Path, adminPrefix) {
		if o := r.Header.Get("Origin"); o != "" {
			u, err := url.Parse(o)
			if err != nil || u.Scheme != "http" || !h.allowed(r, u.Host) {
				http.Error(w, "admin requests from web pages are refused", http.StatusForbidden)
				return
			}
		}
	}
	h.next.ServeHTTP(w, r)
}

// allowed tells whether hostport names this daemon on the connection's own port.
func (h *hostCheck) allowed(r *http.Request, hostport string) bool {
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	localHost, localPort, err := net.SplitHostPort(local.String())
	if err != nil {
		return false
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		// No port: only right when the connection came in on HTTP's default one.
		host, port = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), "80"
	}
	if port != localPort || host == "" {
		return false
	}
	host = strings.ToLower(host)
	switch host {
	case "localhost", "127.0.0.1", "::1", strings.ToLower(h.listenHost):
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.Equal(net.ParseIP(localHost))
}
