// Package buildinfo says which shoal is running, so a bug report, a log and a
// /metrics scrape can all name the build they came from.
package buildinfo

import (
	"runtime/debug"
	"strings"
)

// version is set at link time by packagers (the Nix package passes
// -X github.com/shoal-nix/shoal/internal/buildinfo.version=...); a plain `go build`
// leaves it empty and Version falls back to what the Go toolchain recorded.
var version string

// Info is the running binary's version and what it was built with.
type Info struct {
	Version   string // the release, or the module version, or "devel"
	Revision  string // the VCS commit, when the toolchain recorded one
	Modified  bool   // the commit had uncommitted changes
	GoVersion string
}

// Read describes the running binary.
func Read() Info {
	return read(version, debug.ReadBuildInfo)
}

func read(linked string, readBuild func() (*debug.BuildInfo, bool)) Info {
	info := Info{Version: linked}
	bi, ok := readBuild()
	if ok {
		info.GoVersion = bi.GoVersion
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	if info.Version == "" {
		info.Version = "devel"
	}
	return info
}

// String is the one-line form --version prints: "0.1.0 (abc123def456, go1.24.1)".
func (i Info) String() string {
	var extra []string
	if i.Revision != "" {
		rev := i.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if i.Modified {
			rev += "+dirty"
		}
		extra = append(extra, rev)
	}
	if i.GoVersion != "" {
		extra = append(extra, i.GoVersion)
	}
	if len(extra) == 0 {
		return i.Version
	}
	return i.Version + " (" + strings.Join(extra, ", ") + ")"
}
