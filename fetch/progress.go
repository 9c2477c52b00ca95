package fetch

import (
	"context"
	"fmt"
	"sync"

	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
)

// Progress is a NAR being made available. Entries become ready in NAR order; a reader
// may stream ready entries before the NAR is verified, holding back the end until Wait
// says the whole NAR matched.
//
// A Progress holds a lease on the NAR's chunks in the local cache, and on nothing
// else: the chunks of the manifest it plans with, and each chunk of a whole NAR before
// it is stored. The lease ends once the job is over and every caller of Start has
// called Release, so a stalled client keeps its own NAR's chunks, never the rest of
// the cache.
type Progress struct {
	Key string

	lease *localcache.Lease

	mu       sync.Mutex
	cond     *sync.Cond
	gen      int
	entries  []manifest.Entry
	done     bool
	err      error
	manifest *manifest.Manifest
	holders  int

	// Chunks handed from assembly to the responses streaming this NAR, by entry, so
	// that a chunk just decoded and checked for the NAR's hash is not read and decoded
	// again to be sent. Kept only while someone streams, and within handOffBytes.
	streamers   int
	handed      map[int][]byte
	handedBytes int
}

// handOffBytes bounds the chunks held for the streaming responses of one NAR: when Nix
// takes them slower than they are assembled, the rest are read back from the cache.
const handOffBytes = 16 << 20

func newProgress(key string, lease *localcache.Lease) *Progress {
	p := &Progress{Key: key, lease: lease}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *Progress) hold() {
	p.mu.Lock()
	p.holders++
	p.mu.Unlock()
}

// Release says the caller is done with the NAR's chunks. Call it once per Start.
func (p *Progress) Release() {
	p.mu.Lock()
	p.holders--
	last := p.holders == 0 && p.done
	p.mu.Unlock()
	if last {
		p.lease.Release()
	}
}

// Ready blocks until entry i of generation gen is in the local cache, the job ends, or
// ctx ends. ok is false when entry i will never come in this generation (the job failed,
// or moved to another source whose chunks differ, or the NAR has fewer entries).
func (p *Progress) Ready(ctx context.Context, gen, i int) (e manifest.Entry, ok bool, err error) {
	defer p.wakeOnDone(ctx)()
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if p.gen != gen {
			return e, false, fmt.Errorf("NAR %s: source changed while streaming", p.Key)
		}
		if i < len(p.entries) {
			return p.entries[i], true, nil
		}
		if p.done {
			return e, false, p.err
		}
		if err := ctx.Err(); err != nil {
			return e, false, err
		}
		p.cond.Wait()
	}
}

// wakeOnDone wakes the waiters when ctx ends, so a cond.Wait can notice; call the
// returned function to stop.
func (p *Progress) wakeOnDone(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
}

// Generation returns the current generation, to pass to Ready.
func (p *Progress) Generation() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gen
}

// Wait blocks until the job ends or ctx ends, and returns the verified manifest.
func (p *Progress) Wait(ctx context.Context) (*manifest.Manifest, error) {
	defer p.wakeOnDone(ctx)()
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.done {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p.cond.Wait()
	}
	return p.manifest, p.err
}

// Done reports whether the job ended and how.
func (p *Progress) Done() (bool, *manifest.Manifest, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done, p.manifest, p.err
}

// Stream says the caller is about to stream this NAR with Ready and Take; call the
// returned function when done. Until then, assembly keeps the chunks it checked for
// the caller to take.
func (p *Progress) Stream() (done func()) {
	p.mu.Lock()
	p.streamers++
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		if p.streamers--; p.streamers == 0 {
			p.handed, p.handedBytes = nil, 0
		}
		p.mu.Unlock()
	}
}

// Take returns the checked bytes of entry i of generation gen if assembly handed them
// over and nobody took them yet; otherwise the caller reads the chunk from the cache.
func (p *Progress) Take(gen, i int) ([]byte, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	raw, ok := p.handed[i]
	if !ok || p.gen != gen {
		return nil, false
	}
	delete(p.handed, i)
	p.handedBytes -= len(raw)
	return raw, true
}

// handOff offers entry i's checked bytes to the streaming responses, before the entry
// is published; assembly offers each entry of a generation once. It never blocks: with nobody streaming, or the bound reached, the
// bytes are not kept.
func (p *Progress) handOff(gen, i int, raw []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.streamers == 0 || p.gen != gen || raw == nil || p.handedBytes+len(raw) > handOffBytes {
		return
	}
	if p.handed == nil {
		p.handed = map[int][]byte{}
	}
	p.handed[i] = raw
	p.handedBytes += len(raw)
}

func (p *Progress) publish(gen int, es ...manifest.Entry) {
	p.mu.Lock()
	if p.gen == gen {
		p.entries = append(p.entries, es...)
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *Progress) restart() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gen++
	p.entries = nil
	p.handed, p.handedBytes = nil, 0
	p.cond.Broadcast()
	return p.gen
}

func (p *Progress) finish(m *manifest.Manifest, err error) {
	p.mu.Lock()
	p.done, p.manifest, p.err = true, m, err
	last := p.holders == 0
	p.cond.Broadcast()
	p.mu.Unlock()
	if last {
		p.lease.Release()
	}
}
