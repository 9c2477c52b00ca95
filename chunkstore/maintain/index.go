package maintain

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/nixcache"
	"golang.org/x/sync/errgroup"
)

// IndexReport counts what Index did.
type IndexReport struct {
	NarInfos, Added, Refused int
	// Names counts the package name index entries added (chunkstore.NameKey).
	Names int
}

// Index writes the NAR URL index entries (see chunkstore.PutNarURL) and package name
// index entries (chunkstore.PutName) that the store's narinfos lack: a store published before publish wrote them, or whose source cache is
// gone so that a rerun of publish cannot add them, becomes servable by `shoal serve`.
// A narinfo that does not parse or has an absolute URL is counted and skipped.
func Index(ctx context.Context, s *chunkstore.Store, jobs int, log *slog.Logger) (IndexReport, error) {
	if jobs <= 0 {
		jobs = 16
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var rep IndexReport
	inv, err := s.Inventory(ctx)
	if err != nil {
		return rep, fmt.Errorf("index: %w", err)
	}
	rep.NarInfos = len(inv.NarInfos)
	var added, refused, names atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, hp := range inv.NarInfos {
		g.Go(func() error {
			raw, err := s.NarInfo(gctx, hp)
			if err != nil {
				return err
			}
			ni, err := nixcache.ParseNarInfo(raw)
			if err != nil || ni.HashPart() != hp {
				log.Warn("not indexed: narinfo unreadable or misnamed", "narinfo", hp, "err", err)
				refused.Add(1)
				return nil
			}
			// The package name index, which a sharded publish finds bases by.
			if _, err := chunkstore.NameKey(ni.StorePath); err == nil {
				have, err := s.HasName(gctx, ni.StorePath)
				if err != nil {
					return err
				}
				if !have {
					if err := s.PutName(gctx, ni.StorePath); err != nil {
						return err
					}
					names.Add(1)
				}
			}
			if _, err := chunkstore.NarURLKey(ni.URL); err != nil {
				log.Warn("not indexed", "narinfo", hp, "err", err)
				refused.Add(1)
				return nil
			}
			have, err := s.HasNarURL(gctx, ni.URL)
			if err != nil || have {
				return err
			}
			if err := s.PutNarURL(gctx, ni.URL, hp); err != nil {
				return err
			}
			added.Add(1)
			return nil
		})
	}
	err = g.Wait()
	rep.Added, rep.Refused, rep.Names = int(added.Load()), int(refused.Load()), int(names.Load())
	return rep, err
}
