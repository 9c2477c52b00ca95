package daemon

import (
	"bytes"

	"github.com/shoal-nix/shoal/internal/lru"
	"github.com/shoal-nix/shoal/nixcache"
)

// checkedNarInfos remembers, per hash part, the cached narinfo last parsed and checked
// against the trusted keys. A narinfo hit otherwise spends most of its time verifying
// an ed25519 signature it verified before, and the keys do not change while the daemon
// runs, so the same bytes check out the same way. The local cache stays the one record
// of what is cached and until when: an entry is used only while the cache holds exactly
// the bytes it was made from.
type checkedNarInfos struct {
	c *lru.Cache[string, checkedNarInfo]
}

type checkedNarInfo struct {
	raw []byte
	ni  *nixcache.NarInfo
}

// checkedNarInfoBytes bounds the memory: a narinfo is about 1 KiB parsed, so this holds
// the tens of thousands a large closure asks for.
const checkedNarInfoBytes = 64 << 20

func newCheckedNarInfos() *checkedNarInfos {
	return &checkedNarInfos{c: lru.New[string, checkedNarInfo](checkedNarInfoBytes, 0)}
}

// get returns the narinfo checked earlier from exactly raw.
func (c *checkedNarInfos) get(hashPart string, raw []byte) (*nixcache.NarInfo, bool) {
	e, ok := c.c.Get(hashPart)
	if !ok || !bytes.Equal(e.raw, raw) {
		return nil, false
	}
	return e.ni, true
}

// put records that raw parsed into ni and checked out.
func (c *checkedNarInfos) put(hashPart string, raw []byte, ni *nixcache.NarInfo) {
	c.c.Add(hashPart, checkedNarInfo{raw: raw, ni: ni}, int64(2*len(raw)+512))
}
