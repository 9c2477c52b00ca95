//go:build !linux

package localcache

// willNeed is a no-op where madvise is not wired up; reads are only slower.
func willNeed([]byte) {}
