// Package shoal holds what every part of shoal shares: the one error that means "not
// here". Each package that looks something up (a blob, a chunk, a narinfo, a manifest,
// a peer's answer) wraps it, so callers ask errors.Is(err, shoal.ErrNotFound) whatever
// the layer, and a miss is never mistaken for a failure (a miss is a 404 to Nix; a
// failure may be worth a retry).
package shoal

import "errors"

// ErrNotFound means the thing asked for is not there: a miss, not a failure.
var ErrNotFound = errors.New("not found")
