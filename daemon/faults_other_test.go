//go:build !linux

package daemon_test

import "testing"

// smallFS needs Linux's mount(2); the state directory rows run on Linux only.
func smallFS(t *testing.T, _ string) {
	t.Skip("the state directory rows mount a tmpfs, which needs Linux")
}

func readOnly(t *testing.T, _ string) { t.Skip("needs Linux") }
