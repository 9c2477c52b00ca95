package p2p

import (
	"bufio"
	"context"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/shoal-nix/shoal/chunk"
	"golang.org/x/time/rate"
)

// uploadBurst is the most the upload limiter lets out at once: one write's worth.
const uploadBurst = 64 << 10

// serve runs one request: it bounds the stream's life, and closes it however the
// handler ends (reset when the handler failed, so the asker doesn't take a truncated
// answer for a complete one).
//
// A peer over its request rate is refused at once, and requests wait for one of
// maxLookups slots: what a peer can make this daemon do is bounded per peer and in
// all, whatever it sends.
func (n *Node) serve(s network.Stream, timeout time.Duration, handle func(ctx context.Context, r *bufio.Reader, w *bufio.Writer) error) {
	if !n.limits.allow(s.Conn().RemotePeer()) {
		n.log.Debug("peer over its request rate", "peer", s.Conn().RemotePeer().String(), "protocol", string(s.Protocol()))
		_ = s.Reset()
		return
	}
	_ = s.SetDeadline(time.Now().Add(timeout))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	select {
	case n.lookups <- struct{}{}:
		defer func() { <-n.lookups }()
	case <-ctx.Done():
		_ = s.Reset()
		return
	}
	r := bufio.NewReader(io.LimitReader(s, 64<<10))
	w := bufio.NewWriterSize(&limitedWriter{ctx: ctx, w: s, l: n.limiter}, 64<<10)
	if err := handle(ctx, r, w); err != nil {
		n.log.Debug("peer request failed", "peer", s.Conn().RemotePeer().String(), "protocol", string(s.Protocol()), "err", err)
		_ = s.Reset()
		return
	}
	if err := w.Flush(); err != nil {
		_ = s.Reset()
		return
	}
	_ = s.Close()
}

func (n *Node) handleNarInfo(s network.Stream) {
	n.serve(s, n.cfg.StreamTimeout, func(_ context.Context, r *bufio.Reader, w *bufio.Writer) error {
		var h [32]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return err
		}
		raw, ok := n.cfg.Backend.NarInfo(string(h[:]))
		return writeAnswer(w, raw, ok)
	})
}

func (n *Node) handleManifest(s network.Stream) {
	n.serve(s, n.cfg.BatchTimeout, func(_ context.Context, r *bufio.Reader, w *bufio.Writer) error {
		var h [32]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return err
		}
		raw, ok := n.cfg.Backend.VerifiedManifest(h)
		return writeAnswer(w, raw, ok)
	})
}

func (n *Node) handleHave(s network.Stream) {
	n.serve(s, n.cfg.StreamTimeout, func(_ context.Context, r *bufio.Reader, w *bufio.Writer) error {
		hs, err := readHashes(r, MaxHave)
		if err != nil {
			return err
		}
		for _, h := range hs {
			var ok bool
			if vc, is := n.cfg.Backend.(VerifiedChecker); is {
				ok = vc.HasVerified(h)
			} else {
				_, ok = n.cfg.Backend.VerifiedManifest(h)
			}
			if err := w.WriteByte(map[bool]byte{true: 1, false: 0}[ok]); err != nil {
				return err
			}
		}
		return nil
	})
}

// handleChunks serves chunks of one NAR, and only those its verified manifest lists:
// a peer can't probe for chunks of NARs this daemon never vouched for.
func (n *Node) handleChunks(s network.Stream) {
	n.serve(s, n.cfg.BatchTimeout, func(ctx context.Context, r *bufio.Reader, w *bufio.Writer) error {
		var nar [32]byte
		if _, err := io.ReadFull(r, nar[:]); err != nil {
			return err
		}
		ids, err := readHashes(r, MaxBatch)
		if err != nil {
			return err
		}
		// The manifest index keeps recent manifests parsed: a NAR is fetched in many
		// batches, and parsing its manifest for each cost more than the batch.
		var allowed map[chunk.ID]uint32
		if raw, ok := n.cfg.Backend.VerifiedManifest(nar); ok {
			allowed = n.manifests.sizes(nar, raw)
		}
		for _, h := range ids {
			id := chunk.ID(h)
			var obj []byte
			if _, ok := allowed[id]; ok {
				if o, err := n.cfg.Backend.Chunk(ctx, id); err == nil {
					obj = o
				}
			}
			if err := writeAnswer(w, obj, obj != nil); err != nil {
				return err
			}
			if obj != nil {
				n.servedChunks.Add(1)
				n.servedBytes.Add(int64(len(obj)))
			}
		}
		return nil
	})
}

func writeAnswer(w *bufio.Writer, body []byte, ok bool) error {
	if !ok {
		return w.WriteByte(statusNotFound)
	}
	if err := w.WriteByte(statusFound); err != nil {
		return err
	}
	return writeFrame(w, body)
}

// limitedWriter holds writes to the upload limit, if there is one.
type limitedWriter struct {
	ctx context.Context
	w   io.Writer
	l   *rate.Limiter
}

func (lw *limitedWriter) Write(p []byte) (int, error) {
	if lw.l == nil {
		return lw.w.Write(p)
	}
	written := 0
	for len(p) > 0 {
		k := min(len(p), uploadBurst)
		if err := lw.l.WaitN(lw.ctx, k); err != nil {
			return written, err
		}
		m, err := lw.w.Write(p[:k])
		written += m
		if err != nil {
			return written, err
		}
		p = p[k:]
	}
	return written, nil
}
