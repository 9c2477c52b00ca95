package daemon_test

import (
	"os"
	"syscall"
	"testing"
)

// smallFS mounts a 16 MiB tmpfs on dir for the rest of the test, so a row can fill it
// or make it read-only under the daemon. It needs root, as CI has; elsewhere the row is
// skipped.
func smallFS(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small file system for the state directory needs root")
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=16m,mode=0700"); err != nil {
		t.Fatalf("mounting a tmpfs on the state directory: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting the state directory: %v", err)
		}
	})
}

// readOnly remounts the state directory's file system read-only.
func readOnly(t *testing.T, dir string) {
	if err := syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("remounting the state directory read-only: %v", err)
	}
}
