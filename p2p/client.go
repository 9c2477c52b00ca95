package p2p

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/shoal-nix/shoal"
)

// maxAsk bounds how many peers one narinfo or manifest question goes to at once.
const maxAsk = 8

// request runs one request on a new stream to p: it writes req, closes its side,
// and hands the answer to read. The stream is bounded by timeout, reset when anything
// fails, closed otherwise; the peer is protected in the connection manager meanwhile.
func (n *Node) request(ctx context.Context, p peer.ID, proto protocol.ID, timeout time.Duration, req []byte, read func(*bufio.Reader) error) (err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	defer n.protect(p)()
	s, err := n.host.NewStream(network.WithNoDial(ctx, "asking a known peer"), p, proto)
	if err != nil {
		return fmt.Errorf("opening %s stream to %s: %w", proto, p, err)
	}
	deadline, _ := ctx.Deadline()
	_ = s.SetDeadline(deadline)
	// A deadline doesn't notice cancellation: reset the stream when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer func() {
		stop()
		if err != nil {
			_ = s.Reset()
			if ctx.Err() != nil {
				err = fmt.Errorf("%w (%w)", err, ctx.Err())
			}
			return
		}
		_ = s.Close()
	}()
	if _, err := s.Write(req); err != nil {
		return fmt.Errorf("%s request to %s: %w", proto, p, err)
	}
	if err := s.CloseWrite(); err != nil {
		return fmt.Errorf("%s request to %s: %w", proto, p, err)
	}
	if err := read(bufio.NewReaderSize(s, 64<<10)); err != nil {
		return fmt.Errorf("%s answer from %s: %w", proto, p, err)
	}
	return nil
}

// readAnswer reads a status and, when found, a frame of at most limit bytes.
func readAnswer(r *bufio.Reader, limit int) ([]byte, bool, error) {
	st, err := r.ReadByte()
	if err != nil {
		return nil, false, err
	}
	switch st {
	case statusNotFound:
		return nil, false, nil
	case statusFound:
		b, err := readFrame(r, nil, limit)
		return b, err == nil, err
	default:
		return nil, false, fmt.Errorf("%w %d", errUnknownStatus, st)
	}
}

// askPeers sends one question to up to maxAsk peers at once, first those in prefer
// (DHT providers), then other connected peers, and returns the first answer that
// accept takes; wrong answers are logged and the rest keep counting.
func (n *Node) askPeers(ctx context.Context, proto protocol.ID, req []byte, limit int, prefer []peer.ID, accept func([]byte) error) ([]byte, peer.ID, error) {
	peers := slices.Clone(prefer)
	for _, p := range n.askable() {
		if !slices.Contains(prefer, p) {
			peers = append(peers, p)
		}
	}
	if len(peers) > maxAsk {
		peers = peers[:maxAsk]
	}
	if len(peers) == 0 {
		return nil, "", fmt.Errorf("%w: no LAN peers", shoal.ErrNotFound)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type answer struct {
		body []byte
		from peer.ID
		err  error
	}
	answers := make(chan answer, len(peers))
	for _, p := range peers {
		go func() {
			var body []byte
			err := n.request(ctx, p, proto, n.cfg.StreamTimeout, req, func(r *bufio.Reader) error {
				b, ok, err := readAnswer(r, limit)
				if err != nil {
					return err
				}
				if !ok {
					return shoal.ErrNotFound
				}
				body = b
				return nil
			})
			if err == nil {
				if err = accept(body); err != nil {
					n.log.Warn("peer answer refused", "peer", p.String(), "protocol", string(proto), "err", err)
				}
			}
			answers <- answer{body, p, err}
		}()
	}
	var errs []error
	for range peers {
		a := <-answers
		if a.err == nil {
			n.fetchedBytes.Add(int64(len(a.body)))
			return a.body, a.from, nil
		}
		if !errors.Is(a.err, shoal.ErrNotFound) {
			errs = append(errs, a.err)
		}
	}
	if len(errs) > 0 {
		return nil, "", fmt.Errorf("%w: no peer had it (%w)", shoal.ErrNotFound, errors.Join(errs...))
	}
	return nil, "", fmt.Errorf("%w: no peer had it", shoal.ErrNotFound)
}

// NarInfo asks the peers for the narinfo of a store-path hash part; accept must check
// it against the trusted keys, since a peer's word is worth nothing by itself.
func (n *Node) NarInfo(ctx context.Context, hashPart string, accept func([]byte) error) ([]byte, error) {
	if len(hashPart) != 32 {
		return nil, fmt.Errorf("narinfo hash part %q is not 32 characters", hashPart)
	}
	raw, _, err := n.askPeers(ctx, ProtoNarInfo, []byte(hashPart), MaxNarInfo, nil, accept)
	return raw, err
}

// askManifest asks the peers for the manifest of a NAR they verified, the NAR's DHT
// providers first; accept should parse it and check it names the NAR. It is still
// only a claim until the NAR assembles: it returns who made it.
func (n *Node) askManifest(ctx context.Context, narHash [32]byte, accept func([]byte) error) ([]byte, peer.ID, error) {
	return n.askPeers(ctx, ProtoManifest, narHash[:], MaxManifest, n.providersFor(ctx, narHash), accept)
}

// Have asks the peers this node found (every connected one with a fleet key) and
// the NAR's DHT providers whether they hold the verified NAR, and returns those that
// do. One small question per peer and NAR: wants are never broadcast chunk by chunk,
// nor sent to a peer that merely connected.
func (n *Node) Have(ctx context.Context, narHash [32]byte) []peer.ID {
	peers := n.providersFor(ctx, narHash) // connected, if they could be reached
	for _, p := range n.askable() {
		if !slices.Contains(peers, p) {
			peers = append(peers, p)
		}
	}
	req := appendHashes(nil, [][32]byte{narHash})
	var mu sync.Mutex
	var wg sync.WaitGroup
	var havers []peer.ID
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := n.request(ctx, p, ProtoHave, n.cfg.HaveTimeout, req, func(r *bufio.Reader) error {
				var b [1]byte
				if _, err := io.ReadFull(r, b[:]); err != nil {
					return err
				}
				if b[0] == 1 {
					mu.Lock()
					havers = append(havers, p)
					mu.Unlock()
				}
				return nil
			})
			if err != nil {
				n.log.Debug("have query failed", "peer", p.String(), "err", err)
			}
		}()
	}
	wg.Wait()
	return havers
}
