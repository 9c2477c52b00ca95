package fetch

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"math"
	"slices"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
)

// candidate is a manifest one source offered for the NAR, still untrusted.
type candidate struct {
	src Source
	raw []byte
	m   *manifest.Manifest
}

// manifestRank orders the sources asked for a manifest: what is on this machine, then
// the chunk store (the fleet's own), then peers, whose manifest is only a neighbour's
// claim and is asked for only when the store has none or its did not assemble.
func manifestRank(k Kind) int {
	switch k {
	case Local:
		return 0
	case Remote:
		return 1
	}
	return 2
}

// manifestOrder returns sources in the order they are asked for a manifest.
func manifestOrder(sources []Source) []Source {
	out := slices.Clone(sources)
	slices.SortStableFunc(out, func(a, b Source) int { return manifestRank(a.Kind()) - manifestRank(b.Kind()) })
	return out
}

// firstInstall is the first-install rule: with nothing of the package local and no
// manifest in the local cache, no chunk can be local, so the whole NAR is cheapest
// whenever an upstream serves it, and asking the chunk store for a manifest only adds
// a request. Peers are still asked: their chunks cost the store and the upstream
// nothing.
func firstInstall(k Kind, knownPackage, haveLocalManifest bool) bool {
	return k == Remote && !knownPackage && !haveLocalManifest
}

// manifests yields the manifests to try for req, each source asked lazily in
// manifestOrder, so that a manifest that assembles ends the asking.
func (f *Fetcher) manifests(ctx context.Context, req Request, whole *wholeNAR, log *slog.Logger) iter.Seq[candidate] {
	return func(yield func(candidate) bool) {
		haveLocal := false
		for _, src := range manifestOrder(f.sources()) {
			// Asking the upstreams whether they serve the whole NAR may cost a round
			// trip: only the first-install rule needs the answer.
			if firstInstall(src.Kind(), req.KnownPackage, haveLocal) {
				if w, _ := whole.get(ctx); w != nil {
					log.Info("first version of this package here: fetching the whole NAR without a manifest", "skipped", src.Name())
					continue
				}
			}
			raw, err := src.Manifest(ctx, req.Info.NarHash)
			switch {
			case errors.Is(err, shoal.ErrNotFound):
				if src.Kind() != Local {
					log.Info(src.Name()+" has no manifest for NAR", "path", req.Info.StorePath)
				}
				continue
			case err != nil:
				log.Warn(src.Name()+" manifest unavailable", "path", req.Info.StorePath, "err", err)
				continue
			}
			if src.Kind() != Local {
				f.count(src.Name()+"-manifest", int64(len(raw)))
			}
			m, err := manifest.Parse(raw)
			if err != nil {
				log.Warn(src.Name()+" manifest unavailable", "path", req.Info.StorePath, "err", err)
				src.RejectManifest(req.Info.NarHash, err)
				continue
			}
			if src.Kind() == Local {
				haveLocal = true
			}
			if !yield(candidate{src: src, raw: raw, m: m}) {
				return
			}
		}
	}
}

// offered is one source's offer for the NAR being planned, with what it holds per
// manifest entry.
type offered struct {
	Offer
	src   Source
	cache bool   // the local cache: its chunks need no keeping
	holds []bool // per entry of the manifest
}

// plan is what the planner decided for one manifest.
type plan struct {
	m      *manifest.Manifest
	raw    []byte
	from   Source
	offers []*offered // in chunk order; remote ones only when chunks are missing
	local  []bool     // per entry: a local source holds it
	price  narPrice
	// covered: a peer expects to supply every chunk, which makes chunks cheaper than
	// the whole NAR whatever they weigh.
	covered   bool
	wholeSize uint64 // the whole NAR's FileSize; 0 when no upstream serves it
	whole     bool   // fetch the whole NAR instead
}

func (pl *plan) localOffers() []*offered {
	var out []*offered
	for _, o := range pl.offers {
		if o.src.Kind() == Local {
			out = append(out, o)
		}
	}
	return out
}

// prefetches returns, for each offer that reads many chunks at once cheaper (a packed
// store), the function that reads the entries it is to supply: those no local source
// and no earlier offer holds, as deltas where the plan priced them so.
func (pl *plan) prefetches() []func(context.Context) chunkstore.ReadStats {
	var reads []func(context.Context) chunkstore.ReadStats
	for j, o := range pl.offers {
		pf, ok := o.Offer.(prefetcher)
		if !ok {
			continue
		}
		var wants []want
		for i := range pl.m.Entries {
			if pl.local[i] || slices.ContainsFunc(pl.offers[:j], func(e *offered) bool { return e.holds[i] }) {
				continue
			}
			wants = append(wants, want{entry: i, delta: pl.price.useDelta[i]})
		}
		if len(wants) > 0 {
			reads = append(reads, pf.prefetch(wants))
		}
	}
	return reads
}

func (pl *plan) pricing() Pricing {
	return Pricing{WholeBytes: int64(pl.wholeSize), Whole: pl.whole, DownloadBytes: int64(pl.price.Bytes),
		DeltaSavedBytes: int64(pl.price.FullBytes - pl.price.DeltaBytes)}
}

func (pl *plan) log(log *slog.Logger) {
	p := pl.price
	log.Info("NAR source chosen", "manifest_from", pl.from.Name(),
		"chunks", len(pl.m.Entries), "missing_chunks", p.Missing, "download_chunks", p.Download, "missing_bytes", p.Bytes,
		"delta_chunks", p.Deltas, "delta_bytes", p.DeltaBytes, "delta_share", fmt.Sprintf("%.2f", p.DeltaShare()),
		"delta_saves_bytes", p.FullBytes-p.DeltaBytes,
		"whole_nar_bytes", pl.wholeSize, "peers_cover", pl.covered, "source", map[bool]string{true: "whole NAR", false: "chunks"}[pl.whole])
}

// chooseWhole decides between the chunks and the whole NAR: the whole NAR when an
// upstream serves it, no peer covers the chunks, and the missing chunks would cost
// more bytes than it does.
func chooseWhole(missingBytes, wholeSize uint64, covered bool) bool {
	return !covered && wholeSize > 0 && missingBytes > wholeSize
}

// plan opens the sources for c's manifest (already checked against the narinfo) and
// prices it. Every chunk it lists is
// leased from the start, so that nothing evicts what the plan counted as local.
func (f *Fetcher) plan(ctx context.Context, c candidate, req Request, whole *wholeNAR, lease *localcache.Lease) (*plan, error) {
	m := c.m
	lease.Add(leaseIDs(m)...)
	pl := &plan{m: m, raw: c.raw, from: c.src}
	ids := manifestIDs(m)
	baseIDs := make([]chunk.ID, len(m.Bases))
	for i, b := range m.Bases {
		baseIDs[i] = b.ID
	}
	have := make([]bool, len(ids))
	held := make([]bool, len(ids))
	baseLocal := make([]bool, len(baseIDs))
	open := func(src Source) (*offered, error) {
		o, err := src.Open(ctx, m)
		if err != nil {
			return nil, fmt.Errorf("opening %s: %w", src.Name(), err)
		}
		h, err := o.Holds(ids)
		if err != nil {
			return nil, fmt.Errorf("asking %s which chunks it holds: %w", src.Name(), err)
		}
		of := &offered{Offer: o, src: src, holds: h}
		pl.offers = append(pl.offers, of)
		return of, nil
	}
	// Local sources first: what they hold decides whether anything is missing.
	for i, src := range f.sources() {
		if src.Kind() != Local {
			continue
		}
		o, err := open(src)
		if err != nil {
			return nil, err
		}
		if o.cache = i == 0; o.cache {
			orInto(have, o.holds)
		} else {
			orInto(held, o.holds)
		}
		if len(baseIDs) > 0 {
			bh, err := o.Holds(baseIDs)
			if err != nil {
				return nil, fmt.Errorf("asking %s which base chunks it holds: %w", src.Name(), err)
			}
			orInto(baseLocal, bh)
		}
	}
	pl.price = priceNar(m, have, held, baseLocal)
	pl.local = held
	orInto(pl.local, have)
	if pl.price.Missing == 0 {
		return pl, nil
	}
	for _, src := range f.sources() {
		if src.Kind() == Local {
			continue
		}
		o, err := open(src)
		if err != nil {
			// A source that cannot even be asked supplies nothing; the others may.
			f.log().Warn("chunk source unavailable", "source", src.Name(), "err", err)
			continue
		}
		if src.Kind() == Peer && !slices.Contains(o.holds, false) && len(o.holds) > 0 {
			pl.covered = true
		}
	}
	if err := pl.priceChains(ctx); err != nil {
		// Unpriceable chains are too dear: the whole NAR, if there is one, is cheaper.
		f.log().Warn("chunks of a delta-primary store cannot be priced", "nar", manifest.Key(m.NarHash), "err", err)
		pl.price.Bytes = math.MaxUint64
	}
	if w, wni := whole.get(ctx); w != nil {
		pl.wholeSize = wni.FileSize
	}
	pl.whole = chooseWhole(pl.price.Bytes, pl.wholeSize, pl.covered)
	return pl, nil
}

// chainPricer is an offer that rebuilds chunks of a delta-primary store from their
// chains, and can say what that would fetch.
type chainPricer interface {
	chainCost(ctx context.Context, entries []int) (uint64, error)
}

// priceChains adds to the price what rebuilding the missing entries that have no
// chunk object and no usable delta costs: the objects along their chains, each once.
// A client holding the previous release needs none of that (its deltas are usable);
// a cold one may need most of the keyframe and every delta since.
func (pl *plan) priceChains(ctx context.Context) error {
	if !pl.m.Chained() {
		return nil
	}
	var entries []int
	seen := map[chunk.ID]bool{}
	for i, e := range pl.m.Entries {
		if pl.local[i] || pl.price.useDelta[i] || pl.m.Form(i) == manifest.Full || seen[e.ID] {
			continue
		}
		seen[e.ID] = true
		entries = append(entries, i)
	}
	if len(entries) == 0 {
		return nil
	}
	for _, o := range pl.offers {
		if slices.ContainsFunc(entries, func(i int) bool { return o.holds[i] && o.src.Kind() != Remote }) {
			// A peer holding them sends them as chunks (priced at nothing here).
			return nil
		}
		if cp, ok := o.Offer.(chainPricer); ok {
			cost, err := cp.chainCost(ctx, entries)
			if err != nil {
				return err
			}
			pl.price.Bytes += cost
			return nil
		}
	}
	return fmt.Errorf("%d chunks have no chunk object, and no source rebuilds them", len(entries))
}

func orInto(dst, src []bool) {
	for i := range dst {
		dst[i] = dst[i] || src[i]
	}
}

// leaseIDs lists the chunks a NAR in flight needs kept: its entries, and the base
// chunks its deltas decode against, which eviction must not take mid-assembly.
func leaseIDs(m *manifest.Manifest) []chunk.ID {
	ids := manifestIDs(m)
	for _, b := range m.Bases {
		ids = append(ids, b.ID)
	}
	return ids
}

func manifestIDs(m *manifest.Manifest) []chunk.ID {
	ids := make([]chunk.ID, len(m.Entries))
	for i, e := range m.Entries {
		ids[i] = e.ID
	}
	return ids
}

// checkManifest rejects a manifest that can't describe this NAR before any chunk is
// fetched for it.
func checkManifest(m *manifest.Manifest, req Request) error {
	info := req.Info
	if m.NarHash != info.NarHash || m.NarSize != info.NarSize {
		return fmt.Errorf("manifest describes %s/%d bytes, narinfo %s/%d", manifest.Key(m.NarHash), m.NarSize, info.NarHashString(), info.NarSize)
	}
	// Any chunker this shoal knows will do: chunks are checked by ID, whoever cut them.
	// A store cut differently from the daemon only shares fewer chunks with it.
	if _, err := chunk.ParseIdentity(m.Chunker); err != nil {
		return err
	}
	return m.Validate()
}

// narPrice is what assembling a NAR from chunks costs: per missing entry, its delta
// where the delta's base chunks are local and it is smaller than the full object,
// else the full object; nothing for chunks a local source other than the cache holds.
type narPrice struct {
	Missing    int    // distinct chunks absent from the local cache
	Download   int    // those of them no local source holds: fetched from afar
	Bytes      uint64 // bytes to download, deltas and full objects
	Deltas     int    // distinct missing chunks priced as deltas
	DeltaBytes uint64 // their deltas' bytes
	FullBytes  uint64 // their full objects' bytes, what the deltas save against
	// useDelta says, per entry, to ask for its delta before its full object.
	useDelta []bool
}

// DeltaShare is the fraction of the chunks to download that come as deltas.
func (p narPrice) DeltaShare() float64 {
	if p.Download == 0 {
		return 0
	}
	return float64(p.Deltas) / float64(p.Download)
}

// priceNar prices m's entries. have says which entries the local cache holds, held
// which ones another local source holds (free to read), and baseLocal, parallel to
// m.Bases, which base chunks are in either. A chunk that appears twice is paid for once.
func priceNar(m *manifest.Manifest, have, held, baseLocal []bool) narPrice {
	p := narPrice{useDelta: make([]bool, len(m.Entries))}
	seen := make(map[chunk.ID]bool)
	for i, e := range m.Entries {
		if have[i] {
			continue
		}
		first := !seen[e.ID]
		seen[e.ID] = true
		if first {
			p.Missing++
		}
		if held[i] {
			continue
		}
		if first {
			p.Download++
		}
		cost := uint64(e.StoredSize)
		if d, ok := deltaUsable(m, i, baseLocal); ok {
			p.useDelta[i] = true
			if first {
				p.Deltas++
				p.DeltaBytes += uint64(d)
				// A delta-only entry has no full object to save against.
				p.FullBytes += max(cost, uint64(d))
			}
			cost = uint64(d)
		}
		if first {
			p.Bytes += cost
		}
	}
	return p
}

// deltaUsable returns the delta size of entry i when all its base chunks are local and
// the delta is smaller than the full object.
func deltaUsable(m *manifest.Manifest, i int, baseLocal []bool) (uint32, bool) {
	if i >= len(m.Deltas) || len(m.Deltas[i].Bases) == 0 {
		return 0, false
	}
	d := m.Deltas[i]
	if d.StoredSize >= m.Entries[i].StoredSize && m.Form(i) != manifest.DeltaOnly {
		return 0, false
	}
	for _, b := range d.Bases {
		if int(b) >= len(baseLocal) || !baseLocal[b] {
			return 0, false
		}
	}
	return d.StoredSize, true
}
