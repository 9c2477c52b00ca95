package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestRead(t *testing.T) {
	build := func(main string, settings ...debug.BuildSetting) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) {
			return &debug.BuildInfo{GoVersion: "go1.24.1", Main: debug.Module{Version: main}, Settings: settings}, true
		}
	}
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	rev := debug.BuildSetting{Key: "vcs.revision", Value: "0123456789abcdef0123"}
	dirty := debug.BuildSetting{Key: "vcs.modified", Value: "true"}
	tests := []struct {
		name, linked string
		build        func() (*debug.BuildInfo, bool)
		want         string
	}{
		{"linked version wins", "1.2.3", build("v0.0.0-2026", rev), "1.2.3 (0123456789ab, go1.24.1)"},
		{"module version", "", build("v0.4.0"), "v0.4.0 (go1.24.1)"},
		{"checkout", "", build("(devel)", rev, dirty), "devel (0123456789ab+dirty, go1.24.1)"},
		{"no build info", "", none, "devel"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := read(tc.linked, tc.build).String(); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
