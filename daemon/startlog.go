package daemon

import (
	"fmt"
	"net"

	"github.com/shoal-nix/shoal/internal/buildinfo"
)

// logStart says in one line what this daemon is: the build, where it listens, what
// it serves from, whom it trusts (key names, never keys), where its state lives and
// how big its cache may grow. It is the line to read when something looks wrong.
func (d *Daemon) logStart(addr net.Addr) {
	budget := "unbounded"
	if d.cfg.CacheSize > 0 {
		budget = FormatBytes(d.cfg.CacheSize)
	}
	store := d.cfg.StoreURL
	if store == "" {
		store = "none"
	}
	d.log.Info("serving Nix", "version", buildinfo.Read().String(), "listen", addr.String(),
		"store", store, "upstreams", d.cfg.Upstreams, "trusted_keys", d.keys.Names(),
		"state_dir", d.cfg.StateDir, "cache_budget", budget, "priority", d.cfg.Priority)
	if w := exposure(addr); w != "" {
		d.log.Warn(w, "listen", addr.String())
	}
}

// exposure warns about a listen address other machines can reach: the daemon
// answers anyone who connects, and peers' narinfo lookups tell what a machine is
// installing. The admin API stays loopback-only either way.
func exposure(addr net.Addr) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || tcp.IP.IsLoopback() {
		return ""
	}
	if tcp.IP.IsUnspecified() {
		return "listening on every interface: any host that can reach this port can substitute through this daemon and see what it fetches; use 127.0.0.1 unless that is meant"
	}
	return "listening on a non-loopback address: hosts that can reach it can substitute through this daemon and see what it fetches"
}

// FormatBytes prints a byte count in binary units, for logs and for people (the
// CLI's status).
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 3; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGT"[exp])
}
