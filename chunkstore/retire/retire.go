// Package retire deletes NAR files from a plain binary cache once a chunk store holds
// them verified, so that `shoal serve` can answer for them: the operator's way to move
// old NARs out of the main bucket while the narinfos, which clients keep for weeks,
// stay where they are.
//
// A NAR is retired only if all of this holds, checked in this order (cheapest first):
// the operator's rule selects it (not kept by the keep list, older than the age
// limit); the store holds the very same narinfo, byte for byte; and serve's own check
// passes for its URL: index entry, signature by a trusted key, manifest, every chunk,
// and the reassembled NAR's NarHash and NarSize. A NAR file several narinfos point to
// is deleted only when every one of them may be retired.
package retire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/origin"
	"golang.org/x/sync/errgroup"
)

// Options choose what is retired.
type Options struct {
	// Keep, when set, keeps the NARs of the narinfos whose hash part it accepts.
	Keep func(hashPart string) bool
	// OlderThan, when positive, retires only NAR files last modified longer ago.
	OlderThan time.Duration
	// Keys are the keys serve trusts; a narinfo they do not verify is never retired.
	Keys *nixcache.Keyring
	// Apply deletes; without it the run only reports.
	Apply bool
	// Jobs bounds the NARs checked at once; 0 means 4.
	Jobs int
	// Logger receives one line per NAR retired or refused; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Report counts what a run found and did, by narinfo.
type Report struct {
	NarInfos   int   // narinfos in the cache
	Kept       int   // kept by the keep list or too young
	Gone       int   // NAR file already absent from the cache
	NotInStore int   // the store lacks the narinfo, or holds a different one
	Failed     int   // the store holds it, but serve's check failed
	Shared     int   // retirable, but its NAR file is also another, kept narinfo's
	Retired    int   // NAR files deleted (or, dry run, that would be)
	FreedBytes int64 // their sizes
	Failures   []string
	Elapsed    time.Duration
}

// maxFailures bounds the failures listed in a report.
const maxFailures = 100

type verdict struct {
	url  string
	ok   bool
	size int64
}

// Run walks the cache's narinfos and retires what Options allow.
func Run(ctx context.Context, cache blob.Backend, st *chunkstore.Store, opts Options) (*Report, error) {
	start := time.Now()
	if opts.Keys == nil {
		return nil, errors.New("retire: no trusted public keys")
	}
	if opts.Keep == nil && opts.OlderThan <= 0 {
		return nil, errors.New("retire: neither a keep list nor an age limit: that would retire every NAR")
	}
	if opts.Jobs <= 0 {
		opts.Jobs = 4
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	srv, err := origin.New(st, origin.Options{Keys: opts.Keys, MaxActive: opts.Jobs, ChunkCacheBytes: -1, QueueTimeout: time.Hour})
	if err != nil {
		return nil, err
	}
	defer srv.Close()

	bc := nixcache.NewBinaryCache(cache)
	var hps []string
	if err := bc.List(ctx, func(hp string) error { hps = append(hps, hp); return nil }); err != nil {
		return nil, fmt.Errorf("retire: %w", err)
	}
	rep := &Report{NarInfos: len(hps)}
	var mu sync.Mutex
	fail := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		log.Warn("not retired: " + msg)
		mu.Lock()
		defer mu.Unlock()
		if len(rep.Failures) < maxFailures {
			rep.Failures = append(rep.Failures, msg)
		}
	}
	verdicts := make([]verdict, len(hps))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Jobs)
	for i, hp := range hps {
		g.Go(func() error {
			v, err := judge(gctx, bc, cache, st, srv, hp, opts, now)
			if gctx.Err() != nil {
				return gctx.Err()
			}
			verdicts[i] = v
			mu.Lock()
			switch {
			case err == nil:
			case errors.Is(err, errKept):
				rep.Kept++
			case errors.Is(err, errGone):
				rep.Gone++
			case errors.Is(err, errNotInStore):
				rep.NotInStore++
			default:
				rep.Failed++
			}
			mu.Unlock()
			if err != nil && !errors.Is(err, errKept) && !errors.Is(err, errGone) {
				fail("%s: %v", hp, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return rep, err
	}

	// One NAR file may serve several narinfos: it goes only if all of them may.
	byURL := map[string][]int{}
	for i, v := range verdicts {
		if v.url != "" {
			byURL[v.url] = append(byURL[v.url], i)
		}
	}
	urls := make([]string, 0, len(byURL))
	for u := range byURL {
		urls = append(urls, u)
	}
	sort.Strings(urls)
	for _, u := range urls {
		all, some := true, false
		for _, i := range byURL[u] {
			all = all && verdicts[i].ok
			some = some || verdicts[i].ok
		}
		if !all {
			if some {
				rep.Shared++
			}
			continue
		}
		size := verdicts[byURL[u][0]].size
		if opts.Apply {
			if err := cache.Delete(ctx, u); err != nil {
				return rep, fmt.Errorf("retire: deleting %s from %s: %w", u, cache, err)
			}
			log.Info("retired", "url", u, "bytes", size)
		}
		rep.Retired++
		rep.FreedBytes += size
	}
	rep.Elapsed = time.Since(start)
	return rep, nil
}

var (
	errKept       = errors.New("kept")
	errGone       = errors.New("NAR file already absent")
	errNotInStore = errors.New("not in the store")
)

// judge decides one narinfo. A verdict with a URL but not ok still names its NAR file,
// which then must stay.
func judge(ctx context.Context, bc *nixcache.BinaryCache, cache blob.Backend, st *chunkstore.Store, srv *origin.Server, hp string, opts Options, now func() time.Time) (verdict, error) {
	ni, err := bc.NarInfo(ctx, hp)
	if err != nil {
		return verdict{}, fmt.Errorf("reading its narinfo: %w", err)
	}
	v := verdict{url: ni.URL}
	if opts.Keep != nil && opts.Keep(hp) {
		return v, errKept
	}
	if err := blob.ValidateKey(ni.URL); err != nil {
		return v, fmt.Errorf("NAR URL: %w", err)
	}
	info, err := cache.Stat(ctx, ni.URL)
	if errors.Is(err, shoal.ErrNotFound) {
		return verdict{}, errGone
	}
	if err != nil {
		return v, fmt.Errorf("looking at its NAR file: %w", err)
	}
	v.size = info.Size
	if opts.OlderThan > 0 && now().Sub(info.ModTime) < opts.OlderThan {
		return v, errKept
	}
	raw, err := st.NarInfo(ctx, hp)
	if errors.Is(err, shoal.ErrNotFound) {
		return v, errNotInStore
	}
	if err != nil {
		return v, err
	}
	if !bytes.Equal(raw, ni.Raw) {
		return v, fmt.Errorf("%w: the store's narinfo differs from the cache's", errNotInStore)
	}
	if err := srv.Check(ctx, ni.URL); err != nil {
		if origin.IsNotFound(err) {
			return v, fmt.Errorf("%w: %w", errNotInStore, err)
		}
		return v, fmt.Errorf("serve's check failed: %w", err)
	}
	v.ok = true
	return v, nil
}
