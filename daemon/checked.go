package daemon

import (
	"strconv"

	"github.com/shoal-nix/shoal/internal/lru"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
)

// trustedNarInfo is a narinfo the daemon answers with: parsed, checked against the
// trusted keys, and rendered as the body Nix gets (its URL pointing at shoal's own NAR
// route).
type trustedNarInfo struct {
	ni     *nixcache.NarInfo
	source string // URL of the cache that had it
	body   []byte
	length []string // the Content-Length header's value, made once
}

func newTrustedNarInfo(ni *nixcache.NarInfo, source string) *trustedNarInfo {
	body := nixcache.Rewrite(ni, narURL(manifest.Key(ni.NarHash)))
	return &trustedNarInfo{ni: ni, source: source, body: body, length: []string{strconv.Itoa(len(body))}}
}

// checkedNarInfos remembers, per hash part, the cached narinfo last parsed, checked and
// rendered. A narinfo hit otherwise spends most of its time verifying an ed25519
// signature it verified before and rendering the same body again, and the keys do not
// change while the daemon runs, so the same bytes check out the same way. The local
// cache stays the one record of what is cached and until when: an entry is used only
// while the cache holds exactly the bytes, from the same source, it was made from
// (localcache.Cache.HoldsNarInfo).
type checkedNarInfos struct {
	c *lru.Cache[string, checkedNarInfo]
}

type checkedNarInfo struct {
	raw []byte
	t   *trustedNarInfo
}

// checkedNarInfoBytes bounds the memory: a narinfo is about 1 KiB parsed and 1 KiB
// rendered, so this holds the tens of thousands a large closure asks for.
const checkedNarInfoBytes = 64 << 20

func newCheckedNarInfos() *checkedNarInfos {
	return &checkedNarInfos{c: lru.New[string, checkedNarInfo](checkedNarInfoBytes, 0)}
}

// get returns what was made of the narinfo last cached under hashPart, and the bytes
// it was made from.
func (c *checkedNarInfos) get(hashPart string) (raw []byte, t *trustedNarInfo, ok bool) {
	e, ok := c.c.Get(hashPart)
	return e.raw, e.t, ok
}

// put records that raw, from t.source, parsed and checked out as t.
func (c *checkedNarInfos) put(hashPart string, raw []byte, t *trustedNarInfo) {
	c.c.Add(hashPart, checkedNarInfo{raw: raw, t: t}, int64(2*len(raw)+len(t.body)+512))
}
