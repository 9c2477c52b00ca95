package main

import (
	"io"
	"os"
	"time"

	"golang.org/x/term"
)

// progressEvery is how often long commands print a progress line when their stderr is
// not a terminal.
const progressEvery = 15 * time.Second

// isTerminal reports whether w is the process's stderr on a terminal, where a
// progress bar redraws in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && f == os.Stderr && term.IsTerminal(int(f.Fd()))
}
