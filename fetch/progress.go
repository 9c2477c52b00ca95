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
}

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
