package daemon

import (
	"net"
	"net/http"
	"strings"
)

// hostCheck refuses requests that name a host other than this daemon, on every
// route, and admin requests sent by a web page.
//
// A page served from evil.example whose DNS name is rebound to 127.0.0.1 is
// same-origin with the daemon as far as the browser cares, so neither CORS nor the
// admin API's content-type rule stops it; but its requests still carry
// "Host: evil.example:37515". Only names that cannot be rebound are accepted: the
// loopback names, the address the connection arrived at, and the --listen host. The
// port is not checked, since a port forward (ssh -L, a container's published port)
// changes it and rebinding can't. A browser adds Origin to the requests a page makes
// (fetch, form posts), and none of shoal's own clients does, so an admin request
// whose Origin is anything but the daemon itself, as the request names it, is
// refused too: that also stops pages of other local web services.
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
		if o := r.Header.Get("Origin"); o != "" && !strings.EqualFold(o, "http://"+r.Host) {
			http.Error(w, "admin requests from web pages are refused", http.StatusForbidden)
			return
		}
	}
	h.next.ServeHTTP(w, r)
}

// allowed tells whether hostport names this daemon.
func (h *hostCheck) allowed(r *http.Request, hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
	}
	host = strings.ToLower(host)
	switch host {
	case "":
		return false
	case "localhost", "127.0.0.1", "::1", strings.ToLower(h.listenHost):
		return true
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	localHost, _, err := net.SplitHostPort(local.String())
	return err == nil && ip.Equal(net.ParseIP(localHost))
}
