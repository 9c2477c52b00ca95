//go:build linux

package localcache

import (
	"os"
	"syscall"
	"unsafe"
)

// minAdviseBytes keeps the syscall off small values, which sit in one or
// two pages that the copy faults in anyway.
const minAdviseBytes = 16 << 10

// willNeed asks the kernel to read a value's pages ahead of the copy.
// bbolt maps the file with MADV_RANDOM, so without this a cold 64 KiB value
// is read one page per fault, several times slower than one readahead.
// b must point into the database mapping; failures only cost speed.
func willNeed(b []byte) {
	if len(b) < minAdviseBytes {
		return
	}
	page := uintptr(os.Getpagesize())
	lead := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) & (page - 1))
	start := unsafe.Add(unsafe.Pointer(unsafe.SliceData(b)), -lead)
	_ = syscall.Madvise(unsafe.Slice((*byte)(start), lead+len(b)), syscall.MADV_WILLNEED)
}
