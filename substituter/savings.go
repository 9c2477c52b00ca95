package substituter

// NarPricing is what the assembler chose for one NAR that has a manifest: the whole
// NAR from the upstream, or the chunks it lacks. Against WholeBytes, what Nix would
// have downloaded without shoal, it tells what shoal saved.
type NarPricing struct {
	// WholeBytes is the upstream's NAR file size (FileSize); 0 when unknown.
	WholeBytes int64
	// Whole is set when the whole NAR was chosen.
	Whole bool
	// DownloadBytes is what the missing chunks cost, as deltas where cheaper.
	DownloadBytes int64
	// DeltaSavedBytes is what deltas saved against those chunks' full objects.
	DeltaSavedBytes int64
}

// NarPricer is an optional interface of Assembler.Counters: it is told each
// NarPricing as the choice is made.
type NarPricer interface {
	NarPriced(NarPricing)
}

// notePricing hands p to c when c wants it.
func notePricing(c Counters, p NarPricing) {
	if np, ok := c.(NarPricer); ok {
		np.NarPriced(p)
	}
}
