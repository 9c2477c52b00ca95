package localcache

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/shoal-nix/shoal"
	bolt "go.etcd.io/bbolt"
)

// TestWritesShareTransactions queues writes while the leader slot is held,
// then releases it: everything queued must go out together, within the
// per-transaction limits.
func TestWritesShareTransactions(t *testing.T) {
	tests := []struct {
		name        string
		callers     int
		perCall     int
		wantCommits int64
	}{
		{"one caller", 1, 1, 1},
		{"many single puts", 64, 1, 1},
		{"too big to share", 3, 200, 3},
		{"fills two transactions", 3, 100, 2},
		{"one put each up to the limit", maxTxPuts + 1, 1, 2},
	}
	for ti, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := openTemp(t)
			ctx := context.Background()
			c.w.leader <- struct{}{}
			var wg sync.WaitGroup
			errs := make(chan error, tt.callers)
			for i := range tt.callers {
				var puts []ChunkPut
				for j := range tt.perCall {
					puts = append(puts, testChunk(uint64(ti<<32|i<<16|j), 64))
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- c.PutChunks(ctx, puts)
				}()
			}
			waitFor(t, func() bool {
				c.w.mu.Lock()
				defer c.w.mu.Unlock()
				return len(c.w.queue) == tt.callers
			})
			<-c.w.leader
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if got := c.w.commits.Load(); got != tt.wantCommits {
				t.Fatalf("%d transactions, want %d", got, tt.wantCommits)
			}
			if st, _ := c.Stats(); st.Chunks != tt.callers*tt.perCall {
				t.Fatalf("stored %d chunks, want %d", st.Chunks, tt.callers*tt.perCall)
			}
		})
	}
}

// TestFailingWriteDoesNotFailOthers puts a failing op in a shared
// transaction: the others must still commit and only it must fail.
func TestFailingWriteDoesNotFailOthers(t *testing.T) {
	c, _ := openTemp(t)
	ctx := context.Background()
	boom := errors.New("boom")
	c.w.leader <- struct{}{}
	results := make([]error, 3)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.update(ctx, 1, 0, func(tx *bolt.Tx) error {
				if i == 1 {
					return boom
				}
				return tx.Bucket(bucketManifests).Put([]byte{byte('a' + i)}, []byte("m"))
			})
		}()
		// Queue in a known order.
		waitFor(t, func() bool {
			c.w.mu.Lock()
			defer c.w.mu.Unlock()
			return len(c.w.queue) == i+1
		})
	}
	<-c.w.leader
	wg.Wait()
	for i, err := range results {
		if wantErr := i == 1; (err != nil) != wantErr || (wantErr && !errors.Is(err, boom)) {
			t.Fatalf("op %d: %v", i, err)
		}
	}
	for _, k := range []string{"a", "c"} {
		if _, err := c.GetManifest(k); err != nil {
			t.Fatalf("write %q lost to a neighbour's failure: %v", k, err)
		}
	}
}

// TestQueuedWriteHonoursCancel cancels a caller whose write is still
// queued: it must return promptly and its write must be skipped.
func TestQueuedWriteHonoursCancel(t *testing.T) {
	c, _ := openTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	c.w.leader <- struct{}{}
	p := testChunk(7, 100)
	done := make(chan error, 1)
	go func() { done <- c.PutChunks(ctx, []ChunkPut{p}) }()
	waitFor(t, func() bool {
		c.w.mu.Lock()
		defer c.w.mu.Unlock()
		return len(c.w.queue) == 1
	})
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("PutChunks = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled PutChunks did not return")
	}
	<-c.w.leader
	// The next writer drains the abandoned op without committing it.
	if err := c.PutManifest("m", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetChunk(context.Background(), p.ID); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("cancelled put was committed: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}
