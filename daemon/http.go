package daemon

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixname"
	"github.com/shoal-nix/shoal/substituter"
)

var (
	narInfoPath = regexp.MustCompile(`^/([0-9a-df-np-sv-z]{32})\.narinfo$`)
	narPath     = regexp.MustCompile(`^/nar/([0-9a-df-np-sv-z]{52})\.nar$`)
)

// Handler returns the binary-cache HTTP API Nix talks to.
func (d *Daemon) Handler() http.Handler {
	return newHostCheck(d.cfg.Listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, adminPrefix) {
			d.serveAdmin(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		route := "other"
		began := time.Now()
		defer func() { d.metrics.request(route, rec.status, time.Since(began)) }()
		switch p := r.URL.Path; {
		case p == "/nix-cache-info":
			route = "nix-cache-info"
			d.serveCacheInfo(rec, r)
		case narInfoPath.MatchString(p):
			route = "narinfo"
			d.serveNarInfo(rec, r, narInfoPath.FindStringSubmatch(p)[1])
		case narPath.MatchString(p):
			route = "nar"
			d.narSlots.serve(rec, r, func(w http.ResponseWriter, r *http.Request) { d.serveNAR(w, r, narPath.FindStringSubmatch(p)[1]) })
		case p == "/metrics":
			route = "metrics"
			d.metrics.serveHTTP(rec, r)
		default:
			http.NotFound(rec, r)
		}
	}))
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
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

func (d *Daemon) serveNarInfo(w http.ResponseWriter, r *http.Request, hashPart string) {
	ni, _, err := d.narInfo(r.Context(), hashPart)
	if err != nil {
		// A miss, a refusal and an outage all answer 404: a 5xx makes Nix retry and then
		// fail the build when shoal is the last substituter.
		if !errors.Is(err, substituter.ErrNotFound) {
			d.log.Warn("narinfo unavailable", "hash", hashPart, "err", err)
		}
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	body := substituter.Rewrite(ni, narURL(manifest.Key(ni.NarHash)))
	w.Header().Set("Content-Type", "text/x-nix-narinfo")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
}

// narInfo finds a trusted narinfo for hashPart: local cache, then the store, then the
// upstreams in order. The returned source is the URL of the cache that had it.
func (d *Daemon) narInfo(ctx context.Context, hashPart string) (*substituter.NarInfo, string, error) {
	now := d.now()
	if e, err := d.cache.GetNarInfo(hashPart, now); err == nil {
		d.metrics.Event(eventNarInfoCacheHit)
		if e.Negative {
			return nil, "", fmt.Errorf("%w: %s (cached)", substituter.ErrNotFound, e.Reason)
		}
		ni, err := substituter.ParseNarInfo(e.Raw)
		if err == nil {
			if _, err = d.keys.Verify(ni); err == nil {
				return ni, e.Source, nil
			}
		}
		d.log.Warn("cached narinfo no longer acceptable; looking it up again", "hash", hashPart, "err", err)
	} else if !errors.Is(err, localcache.ErrNotFound) {
		d.log.Warn("reading narinfo cache", "err", err)
	}
	d.metrics.Event(eventNarInfoCacheMiss)
	type found struct {
		ni     *substituter.NarInfo
		source string
	}
	// Nix asks many paths at once, and often the same one from several jobs.
	v, err, _ := d.lookups.Do(hashPart, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.LookupTimeout)
		defer cancel()
		ni, source, err := d.lookup(ctx, hashPart)
		if err != nil {
			return nil, err
		}
		return found{ni, source}, nil
	})
	if err != nil {
		return nil, "", err
	}
	f := v.(found)
	return f.ni, f.source, nil
}

// lookup asks the sources and records the answer, positive or negative.
func (d *Daemon) lookup(ctx context.Context, hashPart string) (*substituter.NarInfo, string, error) {
	type source struct {
		name  string
		fetch func(context.Context) (*substituter.NarInfo, error)
	}
	var sources []source
	if d.store != nil {
		sources = append(sources, source{d.store.String(), func(ctx context.Context) (*substituter.NarInfo, error) {
			raw, err := d.store.NarInfo(ctx, hashPart)
			if err != nil {
				return nil, err
			}
			return substituter.ParseNarInfo(raw)
		}})
	}
	if d.peers != nil {
		// After the fleet's own store, before the upstreams: LAN peers are cheap, and
		// keep answering when the store and the upstreams are down.
		sources = append(sources, source{peerSourceName, func(ctx context.Context) (*substituter.NarInfo, error) {
			return d.peerNarInfo(ctx, hashPart)
		}})
	}
	for _, u := range d.upstreams {
		sources = append(sources, source{u.String(), func(ctx context.Context) (*substituter.NarInfo, error) {
			return u.NarInfo(ctx, hashPart)
		}})
	}
	var reasons []string
	unreachable := false
	for _, s := range sources {
		ni, err := s.fetch(ctx)
		switch {
		case errors.Is(err, substituter.ErrNotFound):
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
	return nil, "", fmt.Errorf("%w: %s", substituter.ErrNotFound, reason)
}

// wholeSource returns the upstream that can serve the whole NAR, and the narinfo whose
// URL and compression to use there.
func (d *Daemon) wholeSource(ctx context.Context, ni *substituter.NarInfo, source string) (*substituter.BinaryCache, *substituter.NarInfo) {
	for _, u := range d.upstreams {
		if u.String() == source {
			return u, ni
		}
	}
	// The narinfo came from the store: ask the upstreams for theirs, which names the
	// NAR file; it must describe the same NAR.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, u := range d.upstreams {
		uni, err := u.NarInfo(ctx, ni.HashPart())
		if err != nil {
			continue
		}
		if uni.NarHash != ni.NarHash || uni.NarSize != ni.NarSize {
			d.log.Warn("upstream describes a different NAR for the path", "upstream", u.String(), "path", ni.StorePath)
			continue
		}
		if _, err := d.keys.Verify(uni); err != nil {
			continue
		}
		return u, uni
	}
	return nil, nil
}

// job gathers what the assembler needs for the NAR behind narKey.
func (d *Daemon) job(ctx context.Context, narKey string) (*substituter.NarJob, error) {
	route, err := d.cache.GetNarRoute(narKey)
	if err != nil {
		return nil, fmt.Errorf("%w: no narinfo was served for NAR %s: %v", substituter.ErrNotFound, narKey, err)
	}
	_ = d.cache.TouchNarRoute(narKey, d.now())
	ni, source, err := d.narInfo(ctx, route.HashPart)
	if err != nil {
		return nil, err
	}
	if manifest.Key(ni.NarHash) != narKey {
		return nil, fmt.Errorf("%w: %s now has NAR %s, not %s", substituter.ErrNotFound, ni.StorePath, manifest.Key(ni.NarHash), narKey)
	}
	job := &substituter.NarJob{Info: ni}
	if raw, err := d.cache.GetManifest(narKey); err == nil {
		if m, err := manifest.Parse(raw); err == nil {
			job.Manifest, job.ManifestRaw = m, raw
		}
	}
	if job.Manifest == nil && d.peers != nil {
		d.peerManifest(ctx, job)
	}
	if job.Manifest != nil {
		job.ResolveWhole = func(ctx context.Context) (*substituter.BinaryCache, *substituter.NarInfo) {
			return d.wholeSource(ctx, ni, source)
		}
	} else if w, wni := d.wholeSource(ctx, ni, source); w != nil {
		job.Whole, job.Info = w, wni
	}
	seeded := d.seedFor(ctx, ni.StorePath)
	firstInstall := false
	if job.Manifest == nil && job.Whole != nil && !seeded {
		// With no version of this package here, no chunk can be local: the whole NAR
		// is the cheapest source and the manifest would only add to the bill.
		has, err := d.cache.HasPackage(packageName(ni.StorePath))
		firstInstall = err == nil && !has
	}
	if firstInstall {
		d.log.Info("first version of this package here: fetching the whole NAR without a manifest", "path", ni.StorePath)
	} else if job.Manifest == nil && d.store != nil {
		m, raw, err := d.store.Manifest(ctx, ni.NarHash)
		switch {
		case err == nil:
			job.Manifest, job.ManifestRaw = m, raw
			d.metrics.Add("store-manifest", int64(len(raw)))
		case errors.Is(err, substituter.ErrNotFound):
			d.log.Info("store has no manifest for NAR", "path", ni.StorePath)
		default:
			d.log.Warn("store manifest unavailable", "path", ni.StorePath, "err", err)
		}
	}
	return job, nil
}

func (d *Daemon) serveNAR(w http.ResponseWriter, r *http.Request, narKey string) {
	ctx := r.Context()
	job, err := d.job(ctx, narKey)
	if err != nil {
		d.log.Warn("NAR unavailable", "nar", narKey, "err", err)
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	size := int64(job.Info.NarSize)
	h := w.Header()
	h.Set("Content-Type", "application/x-nix-nar")
	h.Set("Accept-Ranges", "bytes")
	if r.Method == http.MethodHead {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		return
	}
	start, end, ranged, err := parseRange(r.Header.Get("Range"), size)
	if err != nil {
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		http.Error(w, err.Error(), http.StatusRequestedRangeNotSatisfiable)
		return
	}
	// The NAR's chunks must outlive eviction until the last byte is sent.
	lease, err := d.cache.Lease()
	if err != nil {
		d.log.Warn("NAR unavailable", "nar", narKey, "err", err)
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	defer lease.Release()
	if job.Manifest != nil {
		lease.Add(manifestIDs(job.Manifest)...)
	}
	if err := d.cache.TouchNAR(narKey, job.Info.HashPart()); err != nil {
		d.log.Warn("recording NAR use", "nar", narKey, "err", err)
	}

	p := d.asm.Start(*job)
	wait := d.cfg.VerifyWait
	if ranged {
		// A range is a resumed transfer: serve it only from a verified NAR.
		wait = 24 * time.Hour
	}
	waitCtx, cancel := context.WithTimeout(ctx, wait)
	m, err := p.Wait(waitCtx)
	cancel()
	if m != nil {
		lease.Add(manifestIDs(m)...)
	}
	switch {
	case err == nil:
		d.assembled(job.Info)
		d.streamVerified(w, r, m, start, end, ranged, size)
		return
	case ctx.Err() != nil:
		return // Nix went away
	case errors.Is(err, context.DeadlineExceeded):
		if done, _, _ := p.Done(); !done {
			if d.streamProgress(w, r, p, size) {
				d.assembled(job.Info)
			}
			return
		}
		m, err = p.Wait(ctx)
		if err == nil {
			lease.Add(manifestIDs(m)...)
			d.assembled(job.Info)
			d.streamVerified(w, r, m, start, end, ranged, size)
			return
		}
	}
	if isVerifyFailure(err) {
		d.metrics.Event(eventNarVerifyFailure)
	}
	d.log.Warn("NAR unavailable", "path", job.Info.StorePath, "err", err)
	http.Error(w, "not found", http.StatusNotFound)
}

// streamVerified sends bytes [start, end) of a NAR whose chunks are all local and whose
// manifest assembled to the right NarHash. Each chunk is still checked against its ID:
// if the disk lost one, the connection is broken rather than the response finished.
func (d *Daemon) streamVerified(w http.ResponseWriter, r *http.Request, m *manifest.Manifest, start, end int64, ranged bool, size int64) {
	h := w.Header()
	h.Set("Content-Length", strconv.FormatInt(end-start, 10))
	if ranged {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.WriteHeader(http.StatusOK)
	}
	var buf []byte
	var off int64
	for _, e := range m.Entries {
		cs, ce := off, off+int64(e.Size)
		off = ce
		if ce <= start {
			continue
		}
		if cs >= end {
			break
		}
		raw, err := d.asm.LocalChunk(r.Context(), buf, e)
		if err != nil {
			d.metrics.Event(eventNarVerifyFailure)
			d.log.Error("breaking NAR response: local chunk unusable", "nar", manifest.Key(m.NarHash), "err", err)
			panic(http.ErrAbortHandler)
		}
		buf = raw
		lo, hi := max(start-cs, 0), min(end, ce)-cs
		if _, err := w.Write(raw[lo:hi]); err != nil {
			return
		}
	}
}

// streamProgress sends a NAR while it is still being fetched: chunks go out in order as
// they arrive, checked against their IDs, and the last chunk only after the whole NAR
// matched its NarHash. On a mismatch the connection breaks, so Nix never receives a
// complete wrong body.
func (d *Daemon) streamProgress(w http.ResponseWriter, r *http.Request, p *substituter.Progress, size int64) (verified bool) {
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
		raw, err := d.asm.LocalChunk(ctx, buf, e)
		if err != nil {
			d.metrics.Event(eventNarVerifyFailure)
			d.log.Error("breaking NAR response: local chunk unusable", "nar", p.Key, "err", err)
			panic(http.ErrAbortHandler)
		}
		buf = raw
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

// parseRange understands the single byte ranges Nix sends to resume a download, as
// RFC 9110 says: a Range in another unit, a malformed one, or a set of several is
// ignored (the whole NAR is served); an end past the NAR, however large, is clamped.
// Only a range that starts past the end (or asks for an empty suffix) is an error,
// for 416.
func parseRange(header string, size int64) (start, end int64, ranged bool, err error) {
	whole := func() (int64, int64, bool, error) { return 0, size, false, nil }
	spec, ok := strings.CutPrefix(header, "bytes=")
	if header == "" || !ok || strings.Contains(spec, ",") {
		return whole()
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return whole()
	}
	switch {
	case a == "":
		n, ok := rangeNumber(b)
		if !ok {
			return whole()
		}
		if n == 0 {
			return 0, 0, false, fmt.Errorf("range %q asks for no bytes", header)
		}
		start, end = max(size-n, 0), size
	default:
		if start, ok = rangeNumber(a); !ok {
			return whole()
		}
		end = size
		if b != "" {
			last, ok := rangeNumber(b)
			if !ok || last < start {
				return whole()
			}
			end = min(last, size-1) + 1
		}
	}
	if start >= size {
		return 0, 0, false, fmt.Errorf("range %q starts past the end (%d bytes)", header, size)
	}
	return start, end, true, nil
}

// rangeNumber reads a Range position: digits only, and a number too large for an
// int64 is as good as the largest, since every position is clamped to the NAR.
func rangeNumber(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return math.MaxInt64, true
	}
	return n, true
}

// assembled records that a version of the NAR's package is now local, so the next
// version is priced with its manifest.
func (d *Daemon) assembled(ni *substituter.NarInfo) {
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
