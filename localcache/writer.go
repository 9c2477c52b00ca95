package localcache

import (
	"context"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"
)

// Limits on one shared write transaction. Larger transactions pin more
// dirty pages in memory; smaller ones pay an fsync for little data.
const (
	maxTxPuts  = 256
	maxTxBytes = 64 << 20
)

// writeOp is one caller's unit of work inside a shared transaction. fn must
// have no effects outside tx: if the shared transaction fails, every op in
// it is replayed alone so one bad op cannot fail its neighbours.
type writeOp struct {
	ctx   context.Context
	puts  int // weight against maxTxPuts
	bytes int // weight against maxTxBytes
	fn    func(tx *bolt.Tx) error
	done  chan error // buffered; receives exactly one result
}

// writer groups concurrent writes into shared transactions without a
// background goroutine: each caller queues its op, and whichever caller
// holds the leader slot commits the head of the queue for everyone. While
// one transaction commits, later ops pile up and go out together in the
// next, so batching grows with load and adds no latency when idle.
type writer struct {
	mu      sync.Mutex
	queue   []*writeOp
	leader  chan struct{} // capacity 1: holding a slot makes a caller the committer
	commits atomic.Int64  // shared transactions attempted, for tests and diagnosis
}

func (w *writer) init() { w.leader = make(chan struct{}, 1) }

// update runs fn in a write transaction, possibly shared with other callers.
// If ctx ends first, update returns ctx's error; fn is then either skipped
// or already committed, never half-applied.
func (c *Cache) update(ctx context.Context, puts, bytes int, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	op := &writeOp{ctx: ctx, puts: puts, bytes: bytes, fn: fn, done: make(chan error, 1)}
	w := &c.w
	w.mu.Lock()
	w.queue = append(w.queue, op)
	w.mu.Unlock()
	for {
		select {
		case err := <-op.done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case w.leader <- struct{}{}:
			c.commitNext()
			<-w.leader
		}
	}
}

// commitNext takes ops from the head of the queue up to the transaction
// limits (always at least one) and commits them together. Only the holder
// of the leader slot calls it.
func (c *Cache) commitNext() {
	w := &c.w
	w.mu.Lock()
	n, puts, bytes := 0, 0, 0
	for n < len(w.queue) {
		op := w.queue[n]
		if n > 0 && (puts+op.puts > maxTxPuts || bytes+op.bytes > maxTxBytes) {
			break
		}
		puts += op.puts
		bytes += op.bytes
		n++
	}
	batch := make([]*writeOp, n)
	copy(batch, w.queue[:n])
	clear(w.queue[:n])
	w.queue = w.queue[n:]
	w.mu.Unlock()

	live := batch[:0]
	for _, op := range batch {
		if err := op.ctx.Err(); err != nil {
			op.done <- err
			continue
		}
		live = append(live, op)
	}
	if len(live) == 0 {
		return
	}
	w.commits.Add(1)
	err := c.db.Update(func(tx *bolt.Tx) error {
		for _, op := range live {
			if err := op.fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || len(live) == 1 {
		for _, op := range live {
			op.done <- err
		}
		return
	}
	for _, op := range live {
		op.done <- c.db.Update(op.fn)
	}
}
