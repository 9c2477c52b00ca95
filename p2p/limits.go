package p2p

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"
)

// By default each peer may start peerRate requests a second, peerBurst at once. Fetching a NAR
// takes one "have", one manifest and a chunk batch per 64 chunks (4 MiB), and Nix
// querying a closure asks a narinfo per path, 25 at a time: a peer doing either at
// full speed stays well inside; a peer asking faster is only making this daemon work.
const (
	peerRate  = 1000
	peerBurst = 2000
	// maxLimited bounds the peers tracked; past it, those idle long enough to have a
	// full bucket again are forgotten (they lose nothing by it).
	maxLimited = 4096
)

// peerLimits holds one request-rate limiter per peer.
type peerLimits struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	m     map[peer.ID]*rate.Limiter
}

// allow takes one request from p's allowance, and reports whether there was one.
func (l *peerLimits) allow(p peer.ID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[peer.ID]*rate.Limiter{}
	}
	lim, ok := l.m[p]
	if !ok {
		if len(l.m) >= maxLimited {
			now := time.Now()
			for id, old := range l.m {
				if old.TokensAt(now) >= float64(l.burst) {
					delete(l.m, id)
				}
			}
		}
		lim = rate.NewLimiter(l.rate, l.burst)
		l.m[p] = lim
	}
	return lim.Allow()
}
