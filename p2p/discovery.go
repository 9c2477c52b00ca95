package p2p

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/zeroconf/v2"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

const dnsaddrPrefix = "dnsaddr="

// discovery announces the node over mDNS and connects to the shoal peers it hears
// about. It is bound to the interfaces that carry the node's peer addresses, so a
// daemon listening on one LAN never announces itself on another. Addresses are
// snapshotted when it starts.
type discovery struct {
	server *zeroconf.Server
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startDiscovery(n *Node) (*discovery, error) {
	listen, err := n.host.Network().InterfaceListenAddresses()
	if err != nil {
		return nil, fmt.Errorf("mDNS: listing peer addresses: %w", err)
	}
	var txts, ips []string
	seenIP := map[string]bool{}
	var lanIPs []net.IP
	for _, a := range listen {
		ip, err := manet.ToIP(a)
		if err != nil || ip.IsLoopback() || ip.IsUnspecified() {
			continue
		}
		txts = append(txts, dnsaddrPrefix+a.String()+"/p2p/"+n.host.ID().String())
		if !seenIP[ip.String()] {
			seenIP[ip.String()] = true
			ips = append(ips, ip.String())
			lanIPs = append(lanIPs, ip)
		}
	}
	ifaces, err := interfacesFor(lanIPs)
	if err != nil {
		return nil, err
	}
	if len(ifaces) == 0 {
		return nil, fmt.Errorf("mDNS: no multicast interface carries the peer addresses %v", listen)
	}
	// The instance name only has to be unique on the link; the peer ID is in the TXT records.
	var b [16]byte
	_, _ = rand.Read(b[:])
	instance := hex.EncodeToString(b[:])
	server, err := zeroconf.RegisterProxy(instance, n.cfg.ServiceName, "local", DefaultPort, instance, ips, txts, ifaces)
	if err != nil {
		return nil, fmt.Errorf("mDNS: announcing: %w", err)
	}
	names := make([]string, len(ifaces))
	for i, ifc := range ifaces {
		names[i] = ifc.Name
	}
	n.log.Info("mDNS discovery on", "service", n.cfg.ServiceName, "interfaces", strings.Join(names, ","))
	ctx, cancel := context.WithCancel(context.Background())
	d := &discovery{server: server, cancel: cancel}
	entries := make(chan *zeroconf.ServiceEntry, 64)
	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		if err := zeroconf.Browse(ctx, n.cfg.ServiceName, "local", entries, zeroconf.SelectIfaces(ifaces)); err != nil {
			n.log.Warn("mDNS browsing stopped", "err", err)
		}
	}()
	go func() {
		defer d.wg.Done()
		for e := range entries {
			ai, ok := peerFromTXT(e.Text)
			if !ok || ai.ID == n.host.ID() {
				continue
			}
			// Found on the LAN: asked from now on, even if it connected first.
			n.found.add(ai.ID)
			if len(n.host.Network().ConnsToPeer(ai.ID)) > 0 {
				continue
			}
			go func() {
				// mDNS reports a peer once: a dial that fails (the peer still starting, a
				// loaded machine) would otherwise lose it until its record expires.
				var err error
				for attempt := range 6 {
					if len(n.host.Network().ConnsToPeer(ai.ID)) > 0 {
						return
					}
					if err = n.Connect(ctx, ai); err == nil {
						n.log.Info("peer found on the LAN", "peer", ai.ID.String(), "addrs", fmt.Sprint(ai.Addrs))
						return
					}
					n.log.Debug("mDNS peer unreachable; retrying", "peer", ai.ID.String(), "attempt", attempt+1, "err", err)
					select {
					case <-time.After(time.Second << attempt):
					case <-ctx.Done():
						return
					}
				}
				n.log.Warn("mDNS peer unreachable", "peer", ai.ID.String(), "addrs", fmt.Sprint(ai.Addrs), "err", err)
			}()
		}
	}()
	return d, nil
}

func (d *discovery) close() {
	d.cancel()
	d.server.Shutdown()
	d.wg.Wait()
}

// peerFromTXT reads the addresses a peer announced, keeping those on the LAN.
func peerFromTXT(txt []string) (peer.AddrInfo, bool) {
	var ai peer.AddrInfo
	for _, t := range txt {
		s, ok := strings.CutPrefix(t, dnsaddrPrefix)
		if !ok {
			continue
		}
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		info, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil || (ai.ID != "" && info.ID != ai.ID) {
			continue
		}
		ai.ID = info.ID
		for _, addr := range info.Addrs {
			if lanAddr(addr) {
				ai.Addrs = append(ai.Addrs, addr)
			}
		}
	}
	return ai, ai.ID != "" && len(ai.Addrs) > 0
}

// interfacesFor returns the up, multicast-capable interfaces holding any of ips.
func interfacesFor(ips []net.IP) ([]net.Interface, error) {
	all, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("mDNS: listing interfaces: %w", err)
	}
	var out []net.Interface
	for _, ifc := range all {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagMulticast == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
	match:
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			for _, ip := range ips {
				if ipn.IP.Equal(ip) {
					out = append(out, ifc)
					break match
				}
			}
		}
	}
	return out, nil
}
