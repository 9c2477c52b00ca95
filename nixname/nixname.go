// Package nixname reads package names and versions out of store path names the way
// Nix does, so every part of shoal that looks for "another version of this package"
// (publish choosing a delta base, the daemon seeding from /nix/store) agrees with Nix
// and with each other on what a package and a newer version are.
package nixname

import (
	"cmp"
	"strings"
)

// Split splits a store path's name (without the hash) as Nix's DrvName does: the name
// ends at the first "-" followed by a character that is not a letter, and the rest is
// the version. "go-1.26.3" is "go", "1.26.3"; "hello" has no version.
func Split(name string) (pname, version string) {
	for i := 0; i+1 < len(name); i++ {
		if name[i] == '-' {
			c := name[i+1]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
				return name[:i], name[i+1:]
			}
		}
	}
	return name, ""
}

// FromStorePath returns the name of a store path or its base name, without the
// directory and the hash: "/nix/store/<hash>-go-1.25.0" is "go-1.25.0".
func FromStorePath(storePath string) string {
	base := storePath[strings.LastIndexByte(storePath, '/')+1:]
	if _, name, ok := strings.Cut(base, "-"); ok {
		return name
	}
	return base
}

// SplitOutput separates a version from an output suffix: "1.2-dev" is "1.2", "dev".
// Nix names a derivation's other outputs by appending "-<output>", and they hold other
// files than the main output, so tools looking for an earlier version of the same
// files compare only paths with the same suffix.
func SplitOutput(version string) (ver, suffix string) {
	if i := strings.LastIndexByte(version, '-'); i >= 0 {
		s := version[i+1:]
		if s != "" && !('0' <= s[0] && s[0] <= '9') {
			return version[:i], s
		}
	}
	return version, ""
}

// CompareVersions orders versions as Nix's compareVersions does: both are split into
// components at "." and "-" and between digit and non-digit runs; numbers compare as
// numbers, a number is newer than a word, "pre" is older than anything, and words
// compare as strings; a missing component is older than any present one except "pre".
// Unlike Nix, numbers too long for an int still compare as numbers.
func CompareVersions(a, b string) int {
	for a != "" || b != "" {
		var ca, cb string
		ca, a = nextComponent(a)
		cb, b = nextComponent(b)
		if c := compareComponent(ca, cb); c != 0 {
			return c
		}
	}
	return 0
}

func nextComponent(s string) (comp, rest string) {
	for s != "" && (s[0] == '.' || s[0] == '-') {
		s = s[1:]
	}
	if s == "" {
		return "", ""
	}
	i := 1
	if isDigit(s[0]) {
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	} else {
		for i < len(s) && !isDigit(s[i]) && s[i] != '.' && s[i] != '-' {
			i++
		}
	}
	return s[:i], s[i:]
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// compareComponent follows Nix's componentsLT case by case.
func compareComponent(a, b string) int {
	if a == b {
		return 0
	}
	num := func(s string) bool { return s != "" && isDigit(s[0]) }
	switch {
	case num(a) && num(b):
		a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
		if len(a) != len(b) {
			return cmp.Compare(len(a), len(b))
		}
		return strings.Compare(a, b)
	case a == "" && num(b):
		return -1
	case num(a) && b == "":
		return 1
	case a == "pre":
		return -1
	case b == "pre":
		return 1
	case num(b):
		return -1
	case num(a):
		return 1
	default:
		return strings.Compare(a, b)
	}
}
