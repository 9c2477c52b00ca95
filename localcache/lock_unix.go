//go:build unix

package localcache

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// withFileLock runs fn holding the same flock bbolt takes, so that a file being
// written by a running daemon is not walked half-written. It gives up after timeout
// with ErrLocked.
func withFileLock(path string, timeout time.Duration, fn func() error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for deadline := time.Now().Add(timeout); ; time.Sleep(50 * time.Millisecond) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		if time.Now().After(deadline) {
			return ErrLocked
		}
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return fn()
}
