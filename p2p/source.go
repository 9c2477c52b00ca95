package p2p

import (
	"bufio"
	"context"
	"fmt"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/manifest"
)

// SourceName is the peers' name in logs and metrics.
const SourceName = "peer"

var _ fetch.Source = (*Node)(nil)

// Name implements fetch.Source.
func (n *Node) Name() string { return SourceName }

// Kind implements fetch.Source: peers' chunks cost the chunk store and the upstream
// nothing.
func (n *Node) Kind() fetch.Kind { return fetch.Peer }

// Manifest implements fetch.Source: it asks the peers, the NAR's DHT providers first,
// for the manifest of a NAR they verified, takes the first that parses and names the
// NAR, and remembers who sent it, to drop that peer if the NAR does not assemble.
func (n *Node) Manifest(ctx context.Context, narHash [32]byte) ([]byte, error) {
	raw, from, err := n.askManifest(ctx, narHash, func(raw []byte) error {
		m, err := manifest.Parse(raw)
		if err != nil {
			return err
		}
		if m.NarHash != narHash {
			return fmt.Errorf("manifest describes %s, not %s", manifest.Key(m.NarHash), manifest.Key(narHash))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	n.manifestFrom.Add(narHash, from, 1)
	return raw, nil
}

// RejectManifest implements fetch.Source: the peer that sent a manifest that did not
// assemble into its NAR lied (peers serve only manifests of NARs they verified), and
// is dropped like one that sends a bad chunk.
func (n *Node) RejectManifest(narHash [32]byte, err error) {
	p, ok := n.manifestFrom.Get(narHash)
	if !ok {
		return
	}
	n.drop(p, "sent a manifest for "+manifest.Key(narHash)+" that did not assemble: "+err.Error())
}

// Open implements fetch.Source: see ForNar.
func (n *Node) Open(ctx context.Context, m *manifest.Manifest) (fetch.Offer, error) {
	src, _ := n.ForNar(ctx, m)
	return src, nil
}

// ForNar asks the peers once whether they hold m's NAR, and returns a source that
// fetches its chunks from those that do, in batches spread over them, within the
// NarBudget; covers says whether any does.
func (n *Node) ForNar(ctx context.Context, m *manifest.Manifest) (src *narSource, covers bool) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.NarBudget)
	havers := n.Have(ctx, m.NarHash)
	s := &narSource{n: n, nar: m.NarHash, baseNar: m.BaseNarHash, ctx: ctx, peers: havers, from: map[chunk.ID]peer.ID{},
		wants: make(chan *want, 4*MaxBatch)}
	if len(havers) == 0 {
		cancel()
		return s, false
	}
	n.log.Info("LAN peers hold the NAR", "nar", manifest.Key(m.NarHash), "peers", len(havers))
	go func() {
		defer cancel()
		s.dispatch(len(havers))
	}()
	return s, true
}

type want struct {
	id  chunk.ID
	res chan result
}

type result struct {
	obj []byte
	err error
}

// narSource fetches one NAR's chunks from the peers that hold it. Chunk calls queue
// wants; the dispatcher sends whatever has queued as one batch to the next peer, with
// a few batches in flight per peer, so batches grow on their own while peers are busy.
type narSource struct {
	n       *Node
	nar     [32]byte
	baseNar [32]byte // the NAR the manifest's delta bases come from, named in delta requests
	ctx     context.Context
	wants   chan *want

	mu    sync.Mutex
	peers []peer.ID
	next  int
	// from says who sent each delivered object, to blame on a bad one: chunks by
	// their ID, deltas by the target chunk's ID and by the delta's ID.
	from map[chunk.ID]peer.ID
}

var _ fetch.Offer = (*narSource)(nil)

// Holds implements fetch.Offer: peers that hold the NAR hold all its chunks, and none
// is asked for a chunk it does not list.
func (s *narSource) Holds(ids []chunk.ID) ([]bool, error) {
	held := make([]bool, len(ids))
	if s.livePeers() > 0 && s.ctx.Err() == nil {
		for i := range held {
			held[i] = true
		}
	}
	return held, nil
}

func (s *narSource) livePeers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.peers)
}

// Chunk implements fetch.Offer.
func (s *narSource) Chunk(ctx context.Context, e manifest.Entry) (fetch.Object, error) {
	obj, err := s.chunk(ctx, e.ID)
	return fetch.Object{Frame: obj}, err
}

func (s *narSource) chunk(ctx context.Context, id chunk.ID) ([]byte, error) {
	if s.ctx.Err() != nil || s.livePeers() == 0 {
		return nil, fmt.Errorf("%w: no LAN peer holds the NAR (or its time is up)", shoal.ErrNotFound)
	}
	w := &want{id: id, res: make(chan result, 1)}
	select {
	case s.wants <- w:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.ctx.Done():
		return nil, fmt.Errorf("%w: time for LAN peers is up", shoal.ErrNotFound)
	}
	select {
	case r := <-w.res:
		return r.obj, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.ctx.Done():
		return nil, fmt.Errorf("%w: time for LAN peers is up", shoal.ErrNotFound)
	}
}

// Reject implements fetch.Offer: the peer that sent the object is
// dropped, here and for the node, and the chunk's next request goes elsewhere. id is
// the chunk's ID, or a delta's ID, for a chunk or a delta that failed its check: a
// peer computes a delta from chunks it checked against their IDs, so a delta that
// does not rebuild the chunk is a lie (or a broken peer) either way.
func (s *narSource) Reject(id chunk.ID, err error) {
	s.mu.Lock()
	p, ok := s.from[id]
	s.mu.Unlock()
	if !ok {
		return
	}
	s.remove(p)
	s.n.drop(p, "sent an object for "+id.String()+" that failed its check: "+err.Error())
}

func (s *narSource) remove(p peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, q := range s.peers {
		if q == p {
			s.peers = append(s.peers[:i], s.peers[i+1:]...)
			return
		}
	}
}

// pick returns the next peer round-robin, or false when none is left.
func (s *narSource) pick() (peer.ID, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.peers) == 0 {
		return "", false
	}
	s.next = (s.next + 1) % len(s.peers)
	return s.peers[s.next], true
}

// dispatch sends the queued wants in batches to the holders, of which there were
// peers at the start (s.peers shrinks under s.mu as holders are dropped, by Delta
// calls too).
func (s *narSource) dispatch(peers int) {
	// Two batches in flight per peer keep each busy while the other's answer travels.
	slots := make(chan struct{}, 2*peers)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case slots <- struct{}{}:
		case <-s.ctx.Done():
			return
		}
		var batch []*want
		select {
		case w := <-s.wants:
			batch = append(batch, w)
		case <-s.ctx.Done():
			return
		}
	drain:
		for len(batch) < MaxBatch {
			select {
			case w := <-s.wants:
				batch = append(batch, w)
			default:
				break drain
			}
		}
		p, ok := s.pick()
		if !ok {
			for _, w := range batch {
				w.res <- result{err: fmt.Errorf("%w: every LAN peer holding the NAR was dropped", shoal.ErrNotFound)}
			}
			<-slots
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			s.fetch(p, batch)
		}()
	}
}

// fetch asks p for a batch. A peer that times out or breaks the protocol is dropped;
// the wants it left unanswered fail, and the fetcher asks again, elsewhere.
func (s *narSource) fetch(p peer.ID, batch []*want) {
	ids := make([][32]byte, len(batch))
	for i, w := range batch {
		ids[i] = w.id
	}
	req := appendHashes(append([]byte(nil), s.nar[:]...), ids)
	answered := 0
	err := s.n.request(s.ctx, p, ProtoChunks, s.n.cfg.BatchTimeout, req, func(r *bufio.Reader) error {
		for _, w := range batch {
			obj, ok, err := readAnswer(r, maxObject)
			if err != nil {
				return err
			}
			answered++
			if !ok {
				w.res <- result{err: fmt.Errorf("%w: peer %s lacks chunk %s", shoal.ErrNotFound, p, w.id)}
				continue
			}
			s.mu.Lock()
			s.from[w.id] = p
			s.mu.Unlock()
			s.n.fetchedBytes.Add(int64(len(obj)))
			w.res <- result{obj: obj}
		}
		return nil
	})
	if err == nil {
		return
	}
	s.remove(p)
	if s.ctx.Err() == nil {
		s.n.drop(p, fmt.Sprintf("chunk batch failed: %v", err))
	}
	for _, w := range batch[answered:] {
		w.res <- result{err: fmt.Errorf("peer %s: %w", p, err)}
	}
}
