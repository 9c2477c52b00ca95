package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/nixname"
)

// Handler returns the binary-cache HTTP API Nix talks to, the admin API under
// /shoal/, and /metrics.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	// A GET pattern answers HEAD too; other methods get 405 with an Allow header.
	mux.Handle("GET /nix-cache-info", d.route("nix-cache-info", d.serveCacheInfo))
	mux.Handle("GET /{file}", d.route("narinfo", d.serveNarInfo))
	// NAR responses are capped (see narLimiter); the slot is taken before the fetch.
	mux.Handle("GET /nar/{file}", d.route("nar", func(w http.ResponseWriter, r *http.Request) { d.narSlots.serve(w, r, d.serveNAR) }))
	mux.Handle("GET /metrics", d.route("metrics", d.metrics.serveHTTP))
	mux.HandleFunc(adminPrefix, d.serveAdmin)
	mux.Handle("/", d.route("other", http.NotFound))
	return newHostCheck(d.cfg.Listen, mux)
}

// route counts a route's requests by status and latency for /metrics.
func (d *Daemon) route(name string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		began := time.Now()
		defer func() { d.metrics.request(name, rec.status, time.Since(began)) }()
		h(rec, r)
	})
}

// statusRecorder remembers the status a handler sent, for the metrics.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (flushing, deadlines).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

var narFile = regexp.MustCompile(`^([0-9a-df-np-sv-z]{52})\.nar$`)

// validHashPart tells whether s is a store path's hash part: 32 characters of Nix's
// base32.
func validHashPart(s string) bool {
	return len(s) == 32 && nixbase32.ValidateString(s) == nil
}

// serveCacheInfo answers locally and always: a failing nix-cache-info drops the
// substituter for the whole Nix process, and Nix caches this file for days.
func (d *Daemon) serveCacheInfo(w http.ResponseWriter, r *http.Request) {
	body := fmt.Sprintf("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: %d\n", d.cfg.Priority)
	w.Header().Set("Content-Type", "text/x-nix-cache-info")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodGet {
		_, _ = w.Write([]byte(body))
	}
}

// narURL is shoal's own NAR route. It depends only on the NarHash, so it stays valid
// whichever source serves the NAR later; Nix keeps narinfos with their URL for 30 days.
func narURL(narKey string) string { return "nar/" + narKey + ".nar" }

func (d *Daemon) serveNarInfo(w http.ResponseWriter, r *http.Request) {
	hashPart, ok := strings.CutSuffix(r.PathValue("file"), ".narinfo")
	if !ok || !validHashPart(hashPart) {
		http.NotFound(w, r)
		return
	}
	t, err := d.narInfo(r.Context(), hashPart)
	if err != nil {
		// A miss, a refusal and an outage all answer 404: a 5xx makes Nix retry and then
		// fail the build when shoal is the last substituter.
		if !errors.Is(err, shoal.ErrNotFound) {
			d.log.Warn("narinfo unavailable", "hash", hashPart, "err", err)
		}
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	h := w.Header()
	h["Content-Type"] = narInfoContentType
	h["Content-Length"] = t.length
	if r.Method == http.MethodGet {
		_, _ = w.Write(t.body)
	}
}

// narInfoContentType is shared by every narinfo answer, as trustedNarInfo.length is by
// every answer of one narinfo: net/http only reads header values.
var narInfoContentType = []string{"text/x-nix-narinfo"}

// narInfo finds a trusted narinfo for hashPart: local cache, then the store, then the
// upstreams in order.
func (d *Daemon) narInfo(ctx context.Context, hashPart string) (*trustedNarInfo, error) {
	now := d.now()
	// The hit Nix asks for again and again: checked before, and still what the cache holds.
	if raw, t, ok := d.checked.get(hashPart); ok && d.cache.HoldsNarInfo(hashPart, raw, t.source, now) {
		d.metrics.Event(eventNarInfoCacheHit)
		return t, nil
	}
	if e, err := d.cache.GetNarInfo(hashPart, now); err == nil {
		d.metrics.Event(eventNarInfoCacheHit)
		if e.Negative {
			return nil, fmt.Errorf("%w: %s (cached)", shoal.ErrNotFound, e.Reason)
		}
		ni, err := nixcache.ParseNarInfo(e.Raw)
		if err == nil {
			if _, err = d.keys.Verify(ni); err == nil {
				t := newTrustedNarInfo(ni, e.Source)
				d.checked.put(hashPart, e.Raw, t)
				return t, nil
			}
		}
		d.log.Warn("cached narinfo no longer acceptable; looking it up again", "hash", hashPart, "err", err)
	} else if !errors.Is(err, shoal.ErrNotFound) {
		d.log.Warn("reading narinfo cache", "err", err)
	}
	d.metrics.Event(eventNarInfoCacheMiss)
	// Nix asks many paths at once, and often the same one from several jobs.
	v, err, _ := d.lookups.Do(hashPart, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.LookupTimeout)
		defer cancel()
		ni, source, err := d.lookup(ctx, hashPart)
		if err != nil {
			return nil, err
		}
		return newTrustedNarInfo(ni, source), nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*trustedNarInfo), nil
}

// lookup asks the sources and records the answer, positive or negative.
func (d *Daemon) lookup(ctx context.Context, hashPart string) (*nixcache.NarInfo, string, error) {
	type source struct {
		name  string
		fetch func(context.Context) (*nixcache.NarInfo, error)
	}
	var sources []source
	if d.store != nil {
		sources = append(sources, source{d.store.String(), func(ctx context.Context) (*nixcache.NarInfo, error) {
			raw, err := d.store.NarInfo(ctx, hashPart)
			if err != nil {
				return nil, err
			}
			return nixcache.ParseNarInfo(raw)
		}})
	}
	if d.peers != nil {
		// After the fleet's own store, before the upstreams: LAN peers are cheap, and
		// keep answering when the store and the upstreams are down.
		sources = append(sources, source{peerSourceName, func(ctx context.Context) (*nixcache.NarInfo, error) {
			return d.peerNarInfo(ctx, hashPart)
		}})
	}
	for _, u := range d.upstreams {
		sources = append(sources, source{u.String(), func(ctx context.Context) (*nixcache.NarInfo, error) {
			return u.NarInfo(ctx, hashPart)
		}})
	}
	var reasons []string
	unreachable := false
	for _, s := range sources {
		ni, err := s.fetch(ctx)
		switch {
		case errors.Is(err, shoal.ErrNotFound):
			reasons = append(reasons, s.name+": not found")
			continue
		case err != nil:
			unreachable = true
			reasons = append(reasons, s.name+": "+err.Error())
			d.log.Warn("narinfo source failed", "source", s.name, "hash", hashPart, "err", err)
			continue
		}
		if ni.HashPart() != hashPart {
			reasons = append(reasons, s.name+": narinfo is for another path "+ni.StorePath)
			d.log.Warn("narinfo refused: wrong store path", "source", s.name, "hash", hashPart, "path", ni.StorePath)
			continue
		}
		key, err := d.keys.Verify(ni)
		if err != nil {
			reasons = append(reasons, s.name+": "+err.Error())
			d.log.Warn("narinfo refused: no valid signature from a trusted key", "source", s.name, "path", ni.StorePath, "err", err)
			continue
		}
		now := d.now()
		// The route goes first: a crash between the two writes must not leave a cached
		// narinfo whose NAR URL has no route (its NAR would 404 until the entry expires).
		route := localcache.NarRoute{HashPart: hashPart, StorePath: ni.StorePath, Source: s.name, NarSize: ni.NarSize, LastUsed: now}
		if err := d.cache.PutNarRoute(manifest.Key(ni.NarHash), route); err != nil {
			// Without a route the NAR URL would 404 later: refuse the narinfo now.
			return nil, "", fmt.Errorf("recording NAR route: %w", err)
		}
		d.narInfos.record(hashPart, localcache.NarInfoEntry{Raw: ni.Raw, Source: s.name, Expires: now.Add(d.cfg.PositiveTTL)})
		d.log.Debug("narinfo found", "path", ni.StorePath, "source", s.name, "key", key)
		return ni, s.name, nil
	}
	ttl := d.cfg.NotFoundTTL
	if unreachable {
		ttl = d.cfg.UnreachableTTL
	}
	reason := strings.Join(reasons, "; ")
	if reason == "" {
		reason = "no sources"
	}
	d.narInfos.record(hashPart, localcache.NarInfoEntry{Negative: true, Reason: reason, Expires: d.now().Add(ttl)})
	return nil, "", fmt.Errorf("%w: %s", shoal.ErrNotFound, reason)
}

// request finds what the fetcher needs for the NAR behind narKey: the narinfo a
// narinfo request recorded the route for, looked up (and checked) again.
func (d *Daemon) request(ctx context.Context, narKey string) (fetch.Request, error) {
	route, err := d.cache.GetNarRoute(narKey)
	if err != nil {
		return fetch.Request{}, fmt.Errorf("no narinfo was served for NAR %s: %w", narKey, err)
	}
	_ = d.cache.TouchNarRoute(narKey, d.now())
	t, err := d.narInfo(ctx, route.HashPart)
	if err != nil {
		return fetch.Request{}, err
	}
	ni, source := t.ni, t.source
	if manifest.Key(ni.NarHash) != narKey {
		return fetch.Request{}, fmt.Errorf("%s now has NAR %s, not %s: %w", ni.StorePath, manifest.Key(ni.NarHash), narKey, shoal.ErrNotFound)
	}
	return fetch.Request{Info: ni, From: source, KnownPackage: d.knownPackage(ctx, ni.StorePath)}, nil
}

// knownPackage tells whether a version of storePath's package is local: assembled
// here before, or in /nix/store and indexed (seedFor indexes it now if need be).
func (d *Daemon) knownPackage(ctx context.Context, storePath string) bool {
	if d.seedFor(ctx, storePath) {
		return true
	}
	has, err := d.cache.HasPackage(packageName(storePath))
	return err == nil && has
}

// rangedWait bounds how long a Range request waits for its NAR to be verified: a
// range is a resumed transfer, and is served only from a verified NAR.
const rangedWait = 10 * time.Minute

func (d *Daemon) serveNAR(w http.ResponseWriter, r *http.Request) {
	match := narFile.FindStringSubmatch(r.PathValue("file"))
	if match == nil {
		http.NotFound(w, r)
		return
	}
	narKey := match[1]
	ctx := r.Context()
	req, err := d.request(ctx, narKey)
	if err != nil {
		d.log.Warn("NAR unavailable", "nar", narKey, "err", err)
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/x-nix-nar")
	if r.Method == http.MethodHead {
		h.Set("Accept-Ranges", "bytes")
		h.Set("Content-Length", strconv.FormatUint(req.Info.NarSize, 10))
		return
	}
	if err := d.cache.TouchNAR(narKey, req.Info.HashPart()); err != nil {
		d.log.Warn("recording NAR use", "nar", narKey, "err", err)
	}
	p, err := d.fetcher.Start(req)
	if err != nil {
		d.log.Warn("NAR unavailable", "nar", narKey, "err", err)
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	// Until Release, the NAR's chunks (and only they) stay in the local cache.
	defer p.Release()
	wait := max(d.cfg.VerifyWait, 0) // StreamAtOnce: a context already past its deadline
	if r.Header.Get("Range") != "" {
		wait = rangedWait
	}
	if wait == 0 {
		// Streaming from the start: assembly hands over the chunks it checks.
		defer p.Stream()()
	}
	began := time.Now()
	waitCtx, cancel := context.WithTimeout(ctx, wait)
	m, err := p.Wait(waitCtx)
	cancel()
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil && r.Header.Get("Range") == "" {
		if done, _, _ := p.Done(); !done {
			if d.streamProgress(w, r, p, int64(req.Info.NarSize)) {
				d.assembled(req.Info)
			}
			d.log.Debug("NAR streamed while verified", "nar", narKey, "took", time.Since(began).Round(time.Millisecond))
			return
		}
		m, err = p.Wait(ctx)
	}
	switch {
	case err == nil:
		d.assembled(req.Info)
		verified := time.Now()
		d.serveVerified(w, r, m)
		d.log.Debug("NAR served", "nar", narKey, "wait", verified.Sub(began).Round(time.Millisecond),
			"send", time.Since(verified).Round(time.Millisecond))
	case ctx.Err() != nil:
		// Nix went away.
	default:
		if errors.Is(err, nixcache.ErrNarMismatch) || errors.Is(err, chunk.ErrCorrupt) {
			d.metrics.Event(eventNarVerifyFailure)
		}
		d.log.Warn("NAR unavailable", "path", req.Info.StorePath, "err", err)
		http.Error(w, "not found", http.StatusNotFound)
	}
}

// serveVerified sends a NAR whose chunks are all local and whose manifest assembled to
// the right NarHash, with ranges, through http.ServeContent. Each chunk is still checked
// against its ID as it is read: if the disk lost one, the connection is broken rather
// than the response finished.
func (d *Daemon) serveVerified(w http.ResponseWriter, r *http.Request, m *manifest.Manifest) {
	nar := d.fetcher.NewReader(r.Context(), m)
	nixcache.ServeNAR(w, r, nar)
	if err := nar.Err(); err != nil && r.Context().Err() == nil {
		d.metrics.Event(eventNarVerifyFailure)
		d.log.Error("breaking NAR response: local chunk unusable", "nar", manifest.Key(m.NarHash), "err", err)
		panic(http.ErrAbortHandler)
	}
}

// streamProgress sends a NAR while it is still being fetched: chunks go out in order as
// they arrive, checked against their IDs, and the last chunk only after the whole NAR
// matched its NarHash. On a mismatch the connection breaks, so Nix never receives a
// complete wrong body.
func (d *Daemon) streamProgress(w http.ResponseWriter, r *http.Request, p *fetch.Progress, size int64) (verified bool) {
	ctx := r.Context()
	gen := p.Generation()
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	d.log.Info("NAR verification is taking long; streaming verified chunks while it finishes", "nar", p.Key)
	var buf []byte
	var off int64
	for i := 0; off < size; i++ {
		e, ok, err := p.Ready(ctx, gen, i)
		if !ok {
			if ctx.Err() == nil {
				d.log.Error("breaking NAR response: assembly failed mid-stream", "nar", p.Key, "err", err)
			}
			panic(http.ErrAbortHandler)
		}
		if off+int64(e.Size) >= size {
			if _, err := p.Wait(ctx); err != nil {
				if ctx.Err() == nil {
					d.metrics.Event(eventNarVerifyFailure)
					d.log.Error("breaking NAR response: NAR failed verification", "nar", p.Key, "err", err)
				}
				panic(http.ErrAbortHandler)
			}
			if p.Generation() != gen {
				panic(http.ErrAbortHandler)
			}
		}
		// The chunk assembly just checked, or else the one in the cache, checked again.
		raw, handed := p.Take(gen, i)
		if !handed {
			if raw, err = d.fetcher.LocalChunk(ctx, buf, e); err != nil {
				d.metrics.Event(eventNarVerifyFailure)
				d.log.Error("breaking NAR response: local chunk unusable", "nar", p.Key, "err", err)
				panic(http.ErrAbortHandler)
			}
			buf = raw
		}
		if _, err := w.Write(raw); err != nil {
			return false
		}
		off += int64(e.Size)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
	return true
}

// assembled records that a version of the NAR's package is now local, so the next
// version is priced with its manifest.
func (d *Daemon) assembled(ni *nixcache.NarInfo) {
	d.announce(ni.NarHash)
	if err := d.cache.PutPackage(packageName(ni.StorePath), manifest.Key(ni.NarHash)); err != nil {
		d.log.Warn("recording package", "err", err)
	}
}

// packageName is a store path's name without its version, split as Nix splits
// derivation names: /nix/store/<hash>-go-1.25.0 is "go"; python3.12-numpy-2.1 is
// "python3.12-numpy".
func packageName(storePath string) string {
	pname, _ := nixname.Split(nixname.FromStorePath(storePath))
	return pname
}
