package daemon

import "testing"

func TestPackageName(t *testing.T) {
	tests := map[string]string{
		"/nix/store/nrmgqvzm195ynrwfx6b0bpv3g5vsaf9d-go-1.25.0":                 "go",
		"/nix/store/nrmgqvzm195ynrwfx6b0bpv3g5vsaf9d-python3.12-numpy-2.1.3":    "python3.12-numpy",
		"/nix/store/nrmgqvzm195ynrwfx6b0bpv3g5vsaf9d-hello":                     "hello",
		"/nix/store/nrmgqvzm195ynrwfx6b0bpv3g5vsaf9d-source":                    "source",
		"/nix/store/nrmgqvzm195ynrwfx6b0bpv3g5vsaf9d-glibc-2.40-66-bin":         "glibc",
		"/nix/store/nrmgqvzm195ynrwfx6b0bpv3g5vsaf9d-util-linux-minimal-2.41.1": "util-linux-minimal",
	}
	for path, want := range tests {
		if got := packageName(path); got != want {
			t.Errorf("packageName(%q) = %q, want %q", path, got, want)
		}
	}
}
