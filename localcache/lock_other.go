//go:build !unix

package localcache

import "time"

func withFileLock(_ string, _ time.Duration, fn func() error) error { return fn() }
