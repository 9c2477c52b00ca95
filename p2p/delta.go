package p2p

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
)

// deltaTries bounds the peers one delta is asked of: a delta is an optimisation, and
// after a few "busy" or "not found" answers the full chunk is the quicker way.
const deltaTries = 3

// errPeerBusy is a peer's "every delta encoder is taken": ask another peer, or fetch
// the full chunk. It is no misbehaviour.
var errPeerBusy = errors.New("peer is busy computing deltas")

// deltaRequest asks for target, of NAR nar, as a delta against bases. The bases must
// be chunks of nar or of baseNar (zero when they are all of nar): a peer computes a
// delta only from chunks it would serve under a chunk request, so a delta tells the
// asker nothing a chunk request couldn't.
type deltaRequest struct {
	nar, baseNar [32]byte
	target       chunk.ID
	bases        []chunk.ID
}

func (q *deltaRequest) append(b []byte) []byte {
	b = append(b, q.nar[:]...)
	b = append(b, q.baseNar[:]...)
	b = append(b, q.target[:]...)
	hs := make([][32]byte, len(q.bases))
	for i, id := range q.bases {
		hs[i] = id
	}
	return appendHashes(b, hs)
}

func readDeltaRequest(r *bufio.Reader) (*deltaRequest, error) {
	var q deltaRequest
	for _, h := range [][]byte{q.nar[:], q.baseNar[:], q.target[:]} {
		if _, err := io.ReadFull(r, h); err != nil {
			return nil, err
		}
	}
	hs, err := readHashes(r, chunk.MaxDeltaBases)
	if err != nil {
		return nil, err
	}
	q.bases = make([]chunk.ID, len(hs))
	for i, h := range hs {
		q.bases[i] = h
	}
	return &q, nil
}

// handleDelta answers one delta request: found and the delta object, not found when
// the node lacks (or may not serve) the target or any base, or busy when every
// encoder is taken. Busy is answered at once, never queued: the asker has the full
// chunk to fall back on, and a queue would only make it wait for a worse answer.
func (n *Node) handleDelta(s network.Stream) {
	n.serve(s, n.cfg.StreamTimeout, func(ctx context.Context, r *bufio.Reader, w *bufio.Writer) error {
		q, err := readDeltaRequest(r)
		if err != nil {
			return err
		}
		body, st := n.answerDelta(ctx, q)
		if err := w.WriteByte(st); err != nil {
			return err
		}
		if st != statusFound {
			return nil
		}
		if err := writeFrame(w, body); err != nil {
			return err
		}
		n.servedDeltas.Add(1)
		n.servedDeltaBytes.Add(int64(len(body)))
		return nil
	})
}

// answerDelta checks the privacy rule, then answers from the delta cache, then
// computes the delta if an encoder is free. The encoder slot is released before the
// answer is written, so a slow or rate-limited upload holds no CPU slot.
func (n *Node) answerDelta(ctx context.Context, q *deltaRequest) ([]byte, byte) {
	targetSize, baseSizes, ok := n.deltaSizes(q)
	if !ok {
		return nil, statusNotFound
	}
	id := chunk.DeltaID(q.target, q.bases)
	if body, ok := n.deltaCache.get(id); ok {
		n.deltaCacheHits.Add(1)
		if body == nil {
			return nil, statusNotFound
		}
		return body, statusFound
	}
	select {
	case n.deltaSem <- struct{}{}:
	default:
		n.deltaBusy.Add(1)
		return nil, statusBusy
	}
	body, err := n.computeDelta(ctx, q, targetSize, baseSizes)
	n.releaseEncoders.Reset(encoderIdle)
	<-n.deltaSem
	if err != nil {
		n.log.Debug("not computing a delta", "chunk", q.target.String(), "err", err)
		return nil, statusNotFound
	}
	n.deltasComputed.Add(1)
	n.deltaCache.put(id, body)
	if body == nil {
		return nil, statusNotFound
	}
	return body, statusFound
}

// deltaSizes applies the privacy rule: the target must be listed by the verified
// manifest of the NAR asked about, and each base by that one or by the verified
// manifest of the base NAR named. It returns the sizes those manifests give, which
// bound the decoding before any chunk is read, and false when anything is not listed
// or the delta would exceed the format's limits.
func (n *Node) deltaSizes(q *deltaRequest) (target uint32, bases []uint32, ok bool) {
	listed := func(narHash [32]byte) map[chunk.ID]uint32 {
		raw, ok := n.cfg.Backend.VerifiedManifest(narHash)
		if !ok {
			return nil
		}
		return n.manifests.sizes(narHash, raw)
	}
	inNar := listed(q.nar)
	target, ok = inNar[q.target]
	if !ok || target == 0 || target > chunk.MaxDeltaChunk {
		return 0, nil, false
	}
	var inBase map[chunk.ID]uint32
	if q.baseNar != ([32]byte{}) && q.baseNar != q.nar {
		inBase = listed(q.baseNar)
	}
	bases = make([]uint32, len(q.bases))
	var dict int64
	for i, b := range q.bases {
		size, ok := inNar[b]
		if !ok {
			if size, ok = inBase[b]; !ok {
				return 0, nil, false
			}
		}
		bases[i] = size
		dict += int64(size)
	}
	if dict == 0 || dict > chunk.MaxDictSize {
		return 0, nil, false
	}
	return target, bases, true
}

// computeDelta reads and checks the target and base chunks and encodes the delta. It
// returns a nil body when the delta is no smaller than the target's stored object:
// the asker is better off with the chunk itself.
func (n *Node) computeDelta(ctx context.Context, q *deltaRequest, targetSize uint32, baseSizes []uint32) ([]byte, error) {
	obj, err := n.cfg.Backend.Chunk(ctx, q.target)
	if err != nil {
		return nil, fmt.Errorf("reading target chunk: %w", err)
	}
	raw, err := n.codec.Open(nil, q.target, obj, int(targetSize))
	if err != nil {
		n.log.Warn("local chunk failed its check", "chunk", q.target.String(), "err", err)
		return nil, err
	}
	var total int
	for _, s := range baseSizes {
		total += int(s)
	}
	dict := make([]byte, 0, total)
	for i, b := range q.bases {
		bo, err := n.cfg.Backend.Chunk(ctx, b)
		if err != nil {
			return nil, fmt.Errorf("reading base chunk %s: %w", b, err)
		}
		if dict, err = n.codec.Open(dict, b, bo, int(baseSizes[i])); err != nil {
			n.log.Warn("local chunk failed its check", "chunk", b.String(), "err", err)
			return nil, err
		}
	}
	body, err := n.deltas.Load().EncodeDelta(nil, raw, dict)
	if err != nil {
		return nil, err
	}
	if len(body) >= len(obj) {
		return nil, nil
	}
	return body, nil
}

// Delta implements fetch.Offer: it asks the peers holding the NAR, one
// at a time, for id as a delta against bases, which must be chunks of this NAR or of
// the base NAR its manifest names. It checks only the framing: the caller decodes the
// delta against its own copy of the bases and checks the result against id, and
// reports a wrong one through Reject (under id or the delta's ID), which drops the
// peer that sent it. That blames the peer, so the caller must have checked its own
// bases against their IDs first, as it does any local chunk.
func (s *narSource) Delta(ctx context.Context, id chunk.ID, bases []chunk.ID) ([]byte, error) {
	if len(bases) == 0 || len(bases) > chunk.MaxDeltaBases {
		return nil, fmt.Errorf("delta for chunk %s: %d bases, want 1 to %d", id, len(bases), chunk.MaxDeltaBases)
	}
	if s.ctx.Err() != nil {
		return nil, fmt.Errorf("%w: time for LAN peers is up", shoal.ErrNotFound)
	}
	outer := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	req := (&deltaRequest{nar: s.nar, baseNar: s.baseNar, target: id, bases: bases}).append(nil)
	var errs []error
	lacking := true // every peer asked said "not found" or "busy"
	for range min(s.livePeers(), deltaTries) {
		p, ok := s.pick()
		if !ok {
			break
		}
		body, err := s.askDelta(ctx, p, req)
		if err == nil {
			deltaID := chunk.DeltaID(id, bases)
			s.mu.Lock()
			s.from[id], s.from[deltaID] = p, p
			s.mu.Unlock()
			s.n.fetchedBytes.Add(int64(len(body)))
			return body, nil
		}
		if outer.Err() != nil {
			return nil, fmt.Errorf("delta for chunk %s: %w", id, err)
		}
		if s.ctx.Err() != nil {
			return nil, fmt.Errorf("%w: time for LAN peers is up (%w)", shoal.ErrNotFound, err)
		}
		errs = append(errs, err)
		lacking = lacking && errors.Is(err, shoal.ErrNotFound)
		if misbehaved(err) {
			s.remove(p)
			s.n.drop(p, fmt.Sprintf("delta request failed: %v", err))
		}
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("%w: no LAN peer holds the NAR (or its time is up)", shoal.ErrNotFound)
	}
	if lacking {
		return nil, fmt.Errorf("%w: no LAN peer sent a delta for chunk %s (%w)", shoal.ErrNotFound, id, errors.Join(errs...))
	}
	return nil, fmt.Errorf("delta for chunk %s: %w", id, errors.Join(errs...))
}

// askDelta sends one delta request to p. "Not found", "busy" and a peer that serves no
// deltas wrap ErrNotFound.
func (s *narSource) askDelta(ctx context.Context, p peer.ID, req []byte) ([]byte, error) {
	noDeltas := fmt.Errorf("%w: peer serves no deltas", shoal.ErrNotFound)
	if !s.n.servesDeltas(p) {
		return nil, noDeltas
	}
	var body []byte
	err := s.n.request(ctx, p, ProtoDelta, s.n.cfg.StreamTimeout, req, func(r *bufio.Reader) error {
		st, err := r.ReadByte()
		if err != nil {
			return err
		}
		switch st {
		case statusFound:
			body, err = readFrame(r, nil, maxDeltaObject)
			return err
		case statusNotFound:
			return fmt.Errorf("%w: peer lacks the chunk or a base", shoal.ErrNotFound)
		case statusBusy:
			return fmt.Errorf("%w: %w", shoal.ErrNotFound, errPeerBusy)
		default:
			return fmt.Errorf("%w %d", errUnknownStatus, st)
		}
	})
	// Opening the stream waits for identify, so by now the peer's protocols are known.
	if err != nil && !s.n.servesDeltas(p) {
		return nil, noDeltas
	}
	return body, err
}

// servesDeltas tells whether p offers ProtoDelta, as far as identify has told; a
// peer whose protocols are not known yet may.
func (n *Node) servesDeltas(p peer.ID) bool {
	protos, err := n.host.Peerstore().GetProtocols(p)
	if err != nil || len(protos) == 0 {
		return true
	}
	return slices.Contains(protos, ProtoDelta)
}

// misbehaved tells a broken answer, or one that did not come in time, from a peer
// that merely could not help: a peer running a shoal without deltas refuses the
// protocol, and that is no reason to drop it.
func misbehaved(err error) bool {
	return errors.Is(err, errTooLarge) || errors.Is(err, errUnknownStatus) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}

// The manifest index holds at most manifestIndexSize manifests, the NARs of an upgrade
// wave and their bases, and at most manifestIndexBytes in all: a few hundred KiB each
// for the largest packages, but a manifest may be far larger.
const (
	manifestIndexSize  = 16
	manifestIndexBytes = 32 << 20
	// indexEntryCost estimates a map entry's memory: key, value and the map's share.
	indexEntryCost = 64
)

// manifestIndex keeps the chunk sizes of recently used verified manifests, so that a
// delta request's privacy check is a few lookups rather than parsing two manifests of
// thousands of entries, which measured a tenth of the cost of the delta itself.
type manifestIndex struct {
	mu    sync.Mutex
	byNar map[[32]byte]*indexedManifest
	order [][32]byte // oldest first
	bytes int64
}

type indexedManifest struct {
	raw   []byte // what the sizes were read from; a different manifest is indexed anew
	sizes map[chunk.ID]uint32
}

func (im *indexedManifest) cost() int64 {
	return int64(len(im.raw)) + int64(len(im.sizes))*indexEntryCost
}

// sizes returns the chunk sizes raw lists, raw being the verified manifest of narHash
// as the backend returned it just now, or nil when it does not parse.
func (x *manifestIndex) sizes(narHash [32]byte, raw []byte) map[chunk.ID]uint32 {
	x.mu.Lock()
	im, ok := x.byNar[narHash]
	x.mu.Unlock()
	if ok && bytes.Equal(im.raw, raw) {
		return im.sizes
	}
	m, err := manifest.Parse(raw)
	if err != nil {
		return nil
	}
	im = &indexedManifest{raw: raw, sizes: make(map[chunk.ID]uint32, len(m.Entries))}
	for _, e := range m.Entries {
		im.sizes[e.ID] = e.Size
	}
	if im.cost() > manifestIndexBytes {
		return im.sizes // used once, not kept
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.byNar == nil {
		x.byNar = map[[32]byte]*indexedManifest{}
	}
	if old, ok := x.byNar[narHash]; ok {
		x.bytes -= old.cost()
	} else {
		x.order = append(x.order, narHash)
	}
	x.byNar[narHash] = im
	x.bytes += im.cost()
	for len(x.order) > manifestIndexSize || x.bytes > manifestIndexBytes {
		x.bytes -= x.byNar[x.order[0]].cost()
		delete(x.byNar, x.order[0])
		x.order = x.order[1:]
	}
	return im.sizes
}
