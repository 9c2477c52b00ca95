package p2p

import (
	"bufio"
	"container/list"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// announceHeader starts the announced-list file, so a file of another kind (or a
// future layout) is refused instead of misread.
const announceHeader = "shoal-dht-announced 1"

const (
	// announceWorkers bounds announcements in flight: each is a DHT lookup plus a
	// record sent to the ~20 closest peers.
	announceWorkers = 4
	// provideTimeout bounds one announcement.
	provideTimeout = time.Minute
	// provideRetry is how soon a failed announcement (an empty routing table, say) is
	// tried again.
	provideRetry = 5 * time.Minute
	// saveEvery bounds how often the list is written while it changes.
	saveEvery = time.Minute
)

type announcerConfig struct {
	max      int
	path     string
	rate     float64
	interval time.Duration
	provide  func(ctx context.Context, narHash [32]byte) error
	log      *slog.Logger
}

// announcer keeps the provider records of the most recently used NARs fresh. Its list
// is ordered most recently used first and bounded by max; a NAR falling off the end is
// simply not announced again, and its records expire on the other nodes. Each NAR is
// announced when it joins the list and again every interval after; the times persist,
// so a restarted daemon resumes the schedule instead of announcing everything again.
type announcer struct {
	cfg     announcerConfig
	limiter *rate.Limiter
	wake    chan struct{}

	mu    sync.Mutex
	order *list.List // of *announced, most recently used first
	byNar map[[32]byte]*list.Element
	dirty bool

	provides, fails atomic.Int64
}

type announced struct {
	nar  [32]byte
	last time.Time // last successful announcement; zero: never
	busy bool
}

func newAnnouncer(cfg announcerConfig) (*announcer, error) {
	a := &announcer{
		cfg:     cfg,
		limiter: rate.NewLimiter(rate.Limit(cfg.rate), 1),
		wake:    make(chan struct{}, 1),
		order:   list.New(),
		byNar:   map[[32]byte]*list.Element{},
	}
	if cfg.path != "" {
		if err := a.load(); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// touch moves a NAR to the front of the list, adding it (to be announced soon) if new.
func (a *announcer) touch(nar [32]byte) {
	a.mu.Lock()
	if e, ok := a.byNar[nar]; ok {
		a.order.MoveToFront(e)
		a.mu.Unlock()
		return
	}
	a.byNar[nar] = a.order.PushFront(&announced{nar: nar})
	for a.order.Len() > a.cfg.max {
		old := a.order.Remove(a.order.Back()).(*announced)
		delete(a.byNar, old.nar)
	}
	a.dirty = true
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *announcer) stats() (listed int, provides, fails int64) {
	a.mu.Lock()
	listed = a.order.Len()
	a.mu.Unlock()
	return listed, a.provides.Load(), a.fails.Load()
}

// due returns the NARs whose announcement is due, most recently used first, and marks
// them busy.
func (a *announcer) due(now time.Time) []*announced {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*announced
	for e := a.order.Front(); e != nil; e = e.Next() {
		x := e.Value.(*announced)
		if !x.busy && now.Sub(x.last) >= a.cfg.interval {
			x.busy = true
			out = append(out, x)
		}
	}
	return out
}

// run announces what is due, at most rate a second and announceWorkers at once, until
// ctx ends.
func (a *announcer) run(ctx context.Context) {
	sem := make(chan struct{}, announceWorkers)
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(saveEvery)
	defer tick.Stop()
	for {
		due := a.due(time.Now())
		for i, x := range due {
			if err := a.limiter.Wait(ctx); err != nil {
				a.release(due[i:])
				return
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				a.release(due[i:])
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				pctx, cancel := context.WithTimeout(ctx, provideTimeout)
				err := a.cfg.provide(pctx, x.nar)
				cancel()
				a.done(x, err)
			}()
		}
		select {
		case <-a.wake:
		case <-tick.C:
			if err := a.save(); err != nil {
				a.cfg.log.Warn("keeping the announced NAR list", "err", err)
			}
		case <-ctx.Done():
			return
		}
	}
}

func (a *announcer) release(xs []*announced) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, x := range xs {
		x.busy = false
	}
}

func (a *announcer) done(x *announced, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	x.busy = false
	if err != nil {
		a.fails.Add(1)
		// Try again after provideRetry rather than at the next full interval.
		x.last = time.Now().Add(provideRetry - a.cfg.interval)
		a.cfg.log.Debug("announcing a NAR failed", "err", err)
		return
	}
	a.provides.Add(1)
	x.last = time.Now()
	a.dirty = true
}

// save writes the list, most recently used first, with each NAR's last announcement,
// to a temporary file renamed over the old one.
func (a *announcer) save() error {
	if a.cfg.path == "" {
		return nil
	}
	a.mu.Lock()
	if !a.dirty {
		a.mu.Unlock()
		return nil
	}
	var b strings.Builder
	b.WriteString(announceHeader + "\n")
	for e := a.order.Front(); e != nil; e = e.Next() {
		x := e.Value.(*announced)
		var last int64
		if !x.last.IsZero() && x.last.After(time.Unix(0, 0)) {
			last = x.last.Unix()
		}
		fmt.Fprintf(&b, "%s %d\n", hex.EncodeToString(x.nar[:]), last)
	}
	a.dirty = false
	a.mu.Unlock()
	if err := writeFileAtomic(a.cfg.path, []byte(b.String())); err != nil {
		a.mu.Lock()
		a.dirty = true
		a.mu.Unlock()
		return err
	}
	return nil
}

// load reads a list written by save. A NAR announced less than interval ago keeps its
// time, so it is announced again only when due; the rest are due at once, and the
// rate limit spreads them out.
func (a *announcer) load() error {
	f, err := os.Open(a.cfg.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the announced NAR list: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() || sc.Text() != announceHeader {
		return fmt.Errorf("announced NAR list %s: not a shoal list (want first line %q); move it away to start afresh", a.cfg.path, announceHeader)
	}
	for line := 2; sc.Scan(); line++ {
		hexNar, lastS, ok := strings.Cut(sc.Text(), " ")
		raw, herr := hex.DecodeString(hexNar)
		last, lerr := strconv.ParseInt(lastS, 10, 64)
		if !ok || herr != nil || len(raw) != 32 || lerr != nil || last < 0 {
			return fmt.Errorf("announced NAR list %s line %d: want a 64-digit hex NarHash and a Unix time; move it away to start afresh", a.cfg.path, line)
		}
		var nar [32]byte
		copy(nar[:], raw)
		if _, dup := a.byNar[nar]; dup || a.order.Len() >= a.cfg.max {
			continue
		}
		x := &announced{nar: nar}
		if last > 0 {
			x.last = time.Unix(last, 0)
		}
		a.byNar[nar] = a.order.PushBack(x)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the announced NAR list: %w", err)
	}
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
