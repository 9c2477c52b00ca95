package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// notifyTimeout bounds one message to the service manager. The socket is local and the
// manager reads it promptly; a manager that doesn't must not hold up serving or shutdown.
const notifyTimeout = 2 * time.Second

// notifySocketEnv names the variable systemd sets for units with Type=notify.
const notifySocketEnv = "NOTIFY_SOCKET"

// A notifier reports the daemon's state to systemd over the sd_notify protocol: one
// datagram of newline-separated VAR=VALUE assignments (READY=1, STOPPING=1, STATUS=...)
// sent to the unix socket named by $NOTIFY_SOCKET. With Type=notify, systemd counts the
// unit as started only once READY=1 arrives, so units ordered after shoal (and the VM
// tests that wait for it) see a daemon that already accepts connections. The protocol
// is a few lines, so shoal speaks it itself rather than taking a dependency.
type notifier struct {
	// socket is $NOTIFY_SOCKET: an absolute path, or an abstract socket name written
	// with a leading '@'. Empty when no service manager asked for notifications.
	socket string
}

// notifierFromEnv reads $NOTIFY_SOCKET. The variable stays set: the daemon starts no
// child processes that could mistake it for their own.
func notifierFromEnv() notifier {
	return notifier{socket: os.Getenv(notifySocketEnv)}
}

// notify sends state, a newline-separated list of assignments such as "READY=1". It
// does nothing when no socket is configured.
func (n notifier) notify(ctx context.Context, state string) error {
	if n.socket == "" {
		return nil
	}
	// Go's unix sockets map a leading '@' to the abstract namespace's leading NUL byte,
	// which is how systemd writes abstract names in $NOTIFY_SOCKET. Other forms
	// (relative paths, newer managers' vsock: addresses) are refused, not guessed at.
	if !strings.HasPrefix(n.socket, "/") && !strings.HasPrefix(n.socket, "@") {
		return fmt.Errorf("%s=%q: want an absolute path or an abstract socket name starting with '@'", notifySocketEnv, n.socket)
	}
	if len(n.socket) < 2 {
		return fmt.Errorf("%s=%q: socket name is empty", notifySocketEnv, n.socket)
	}
	deadline := time.Now().Add(notifyTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	dialer := net.Dialer{Deadline: deadline}
	conn, err := dialer.DialContext(ctx, "unixgram", n.socket)
	if err != nil {
		return fmt.Errorf("connecting to the service manager's notify socket %s: %w", n.socket, err)
	}
	defer conn.Close()
	if err := conn.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("setting a deadline on the notify socket: %w", err)
	}
	// A datagram arrives whole or not at all: a short write cannot happen without an
	// error, but say so if it ever did rather than report success.
	if k, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sending %q to the service manager: %w", state, err)
	} else if k != len(state) {
		return fmt.Errorf("sending %q to the service manager: wrote %d of %d bytes", state, k, len(state))
	}
	return nil
}

// sdNotify tells the service manager, if any, about a change of state. Failing to
// notify is logged, not fatal: the daemon serves Nix either way, and systemd reports a
// unit that never became ready on its own.
func (d *Daemon) sdNotify(state string) {
	ctx, cancel := context.WithTimeout(context.Background(), notifyTimeout)
	defer cancel()
	if err := notifierFromEnv().notify(ctx, state); err != nil {
		d.log.Warn("notifying the service manager", "state", state, "err", err)
	}
}
