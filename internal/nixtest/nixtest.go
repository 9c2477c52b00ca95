// Package nixtest lets Go tests drive the real Nix CLI: make store paths, sign them,
// write binary caches and substitute from them into throwaway stores.
//
// shoal's promises are about what Nix accepts, so its end-to-end tests use a real Nix
// client rather than a model of one. The harness targets Nix 2.8 (Debian's nix-bin)
// running single-user as root, and every command runs in an isolated environment so
// that tests cannot see each other's state or the machine's configuration.
//
// How Nix 2.8 behaves, as checked by this package's tests:
//
//   - Paths made with `nix-store --add` are content-addressed (their narinfo carries a
//     `CA:` line) and Nix accepts them from any cache without a valid signature, whatever
//     trusted-public-keys says. Real packages are input-addressed, so AddPath builds a
//     trivial derivation instead, and signatures then decide: a cache signed with a key
//     Nix does not trust is refused with "lacks a valid signature".
//     AddContentAddressed keeps the `nix-store --add` shape for tests about the CA field.
//   - `nix copy --from URL --to /some/root` needs nothing beyond
//     `--option trusted-public-keys KEY`: no --no-check-sigs when the paths are signed.
//     It works the same for file:// and http:// caches; over http Nix first asks for
//     /nix-cache-info, then HEAD and GET on the narinfo, then GETs the NAR.
//   - Copying an unsigned input-addressed path from the default store to a chroot store
//     fails under require-sigs = true even though the path was built locally: only
//     --no-check-sigs or require-sigs = false lets it through.
//   - `nix copy --to file://DIR` needs no signatures and writes xz NARs unless the URL
//     says `?compression=zstd|bzip2|none`.
//   - `nix store verify` has no --check-contents flag in 2.8: it checks contents by
//     default (--no-contents turns that off) and also checks trust, for which a path
//     needs one signature by a key in trusted-public-keys (or to be content-addressed).
//     It exits 1 for corrupted contents and 2 for untrusted paths.
//   - Nix keeps narinfos it fetched over http, including misses (for an hour), in
//     $XDG_CACHE_HOME/nix/binary-cache-v6.sqlite. Each Env has its own, so one test
//     cannot answer another's questions; within one Env, use a fresh Env (or
//     ExtraConfig("narinfo-cache-negative-ttl = 0")) when Nix must ask again.
package nixtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// CommandTimeout bounds every Nix command the harness runs when the caller's context
// has no deadline of its own, so a wedged Nix fails the test instead of hanging CI.
const CommandTimeout = 3 * time.Minute

// e2eVar is set by test.sh so that a machine without Nix fails the end-to-end tests
// instead of silently skipping them.
const e2eVar = "SHOAL_E2E"

// Require skips the test when the Nix CLI cannot be used here (nix-store is not on
// PATH, or single-user Nix has no write access to /nix), or fails it when SHOAL_E2E=1,
// so that CI cannot pass by skipping.
func Require(t testing.TB) {
	t.Helper()
	if reason := unusable(); reason != "" {
		if os.Getenv(e2eVar) == "1" {
			t.Fatalf("%s=1 but %s", e2eVar, reason)
		}
		t.Skip(reason)
	}
}

// unusable says why Nix cannot run here, or "" when it can.
func unusable() string {
	for _, prog := range []string{"nix-store", "nix", "nix-build"} {
		if _, err := exec.LookPath(prog); err != nil {
			return prog + " is not on PATH (install Debian's nix-bin)"
		}
	}
	if os.Geteuid() == 0 {
		return "" // root may create /nix on first use
	}
	const w = 2 // W_OK
	if err := syscall.Access("/nix/store", w); err != nil {
		return "single-user Nix needs write access to /nix/store: " + err.Error()
	}
	return ""
}

// Env runs Nix commands with their own configuration, caches and home directory under
// a test's temporary directory. Store paths still go to the machine's default store
// (/nix/store): Nix paths are named by their contents, so tests sharing it cannot
// disturb each other, and substitution tests copy into chroot stores of their own.
type Env struct {
	dir         string
	env         []string
	requireSigs bool
	extra       []string

	mu   sync.Mutex
	keys []string // public keys made by GenerateKey, trusted by Verify
}

// Option changes how NewEnv configures Nix.
type Option func(*Env)

// RequireSigs sets Nix's require-sigs (true by default, as on a real machine).
func RequireSigs(on bool) Option { return func(e *Env) { e.requireSigs = on } }

// ExtraConfig appends nix.conf lines to the environment's NIX_CONFIG.
func ExtraConfig(lines ...string) Option {
	return func(e *Env) { e.extra = append(e.extra, lines...) }
}

// NewEnv makes an isolated Nix environment for t. It calls Require first.
func NewEnv(t testing.TB, opts ...Option) *Env {
	t.Helper()
	Require(t)
	e := &Env{dir: t.TempDir(), requireSigs: true}
	for _, o := range opts {
		o(e)
	}
	dirs := map[string]string{
		"HOME":            "home",
		"XDG_CACHE_HOME":  "cache",
		"XDG_CONFIG_HOME": "config",
		"XDG_DATA_HOME":   "data",
		// An empty system configuration directory: the machine's /etc/nix/nix.conf
		// must not change what tests see.
		"NIX_CONF_DIR": "etc-nix",
	}
	for _, v := range os.Environ() {
		name, _, _ := strings.Cut(v, "=")
		if _, ours := dirs[name]; ours || strings.HasPrefix(name, "NIX_") || strings.HasPrefix(name, "XDG_") {
			continue
		}
		e.env = append(e.env, v)
	}
	for name, sub := range dirs {
		p := filepath.Join(e.dir, sub)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatalf("nixtest: making %s: %v", name, err)
		}
		e.env = append(e.env, name+"="+p)
	}
	e.env = append(e.env, "NIX_CONFIG="+e.config())
	return e
}

// config is the NIX_CONFIG every command gets. "substituters =" keeps Nix off
// cache.nixos.org: tests must only ever talk to caches they made.
func (e *Env) config() string {
	lines := []string{
		"experimental-features = nix-command",
		"sandbox = false",
		"build-users-group =",
		"substituters =",
		fmt.Sprintf("require-sigs = %t", e.requireSigs),
	}
	return strings.Join(append(lines, e.extra...), "\n") + "\n"
}

// Run runs a Nix program in the isolated environment and returns its combined output.
// args[0] is the program (nix, nix-store, nix-build, ...), so that a call reads like
// the command line it stands for: Run(ctx, "nix", "path-info", "--json", p).
// The error, if any, includes the output.
func (e *Env) Run(ctx context.Context, args ...string) (string, error) {
	_, combined, err := e.run(ctx, args...)
	return combined, err
}

// run is Run that also returns standard output alone, for commands whose answer is
// on stdout while Nix talks on stderr.
func (e *Env) run(ctx context.Context, args ...string) (stdout, combined string, err error) {
	if len(args) == 0 || !strings.HasPrefix(args[0], "nix") {
		return "", "", fmt.Errorf("nixtest: Run wants a Nix program as args[0], got %q", args)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, CommandTimeout)
		defer cancel()
	}
	var (
		out, all bytes.Buffer
		mu       sync.Mutex
	)
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = e.env
	cmd.Dir = e.dir
	cmd.Stdout = &lockedTee{mu: &mu, a: &out, b: &all}
	cmd.Stderr = &lockedTee{mu: &mu, b: &all}
	// Builders Nix starts may hold the output pipes after Nix is killed.
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("running %s: %w\n%s", strings.Join(args, " "), err, all.String())
	}
	return out.String(), all.String(), err
}

// lockedTee writes to a (if set) and b under one mutex, so stdout and stderr
// interleave in the combined buffer as Nix wrote them.
type lockedTee struct {
	mu   *sync.Mutex
	a, b *bytes.Buffer
}

func (w *lockedTee) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.a != nil {
		w.a.Write(p)
	}
	return w.b.Write(p)
}

// must runs a command for a helper that fails the test on error, and returns its
// trimmed standard output.
func (e *Env) must(t testing.TB, args ...string) string {
	t.Helper()
	stdout, _, err := e.run(t.Context(), args...)
	if err != nil {
		t.Fatalf("nixtest: %v", err)
	}
	return strings.TrimSpace(stdout)
}

// GenerateKey makes a binary-cache signing key pair called name and returns the
// secret key's file and the public key ("name:base64"). Verify trusts every key the
// Env generated.
func (e *Env) GenerateKey(t testing.TB, name string) (secretKeyFile, publicKey string) {
	t.Helper()
	kd, err := os.MkdirTemp(e.dir, "key-")
	if err != nil {
		t.Fatalf("nixtest: making a key directory: %v", err)
	}
	sk, pk := filepath.Join(kd, "sk"), filepath.Join(kd, "pk")
	e.must(t, "nix-store", "--generate-binary-cache-key", name, sk, pk)
	b, err := os.ReadFile(pk)
	if err != nil {
		t.Fatalf("nixtest: reading the public key: %v", err)
	}
	publicKey = strings.TrimSpace(string(b))
	e.mu.Lock()
	e.keys = append(e.keys, publicKey)
	e.mu.Unlock()
	return sk, publicKey
}

// buildExpr is a derivation whose output is a copy of src. Its output path is
// input-addressed, like nearly every path in a real binary cache, so substituting it
// needs a trusted signature. /bin/sh and /bin/cp come from the host: the build runs
// unsandboxed.
const buildExpr = `{ src, name }: derivation {
  inherit name;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "/bin/cp -R \"$src\" \"$out\"" ];
  src = builtins.path { path = src; name = "${name}-src"; };
}`

// AddPath makes a store path called name holding a directory tree given as relative
// path -> contents, and returns the store path. Files are 0644; names ending in ".sh"
// or under "bin/" are 0755. The path is built by a derivation rather than added with
// `nix-store --add`, so that it is input-addressed and signatures matter (see the
// package documentation); the same name and files always give the same path.
func (e *Env) AddPath(t testing.TB, name string, files map[string][]byte) string {
	t.Helper()
	src := e.writeTree(t, name, files)
	return e.must(t, "nix-build", "--no-out-link", "-E", buildExpr, "--argstr", "src", src, "--argstr", "name", name)
}

// AddContentAddressed makes a store path like AddPath but with `nix-store --add`, so
// that it is content-addressed: its narinfo has a CA line and Nix accepts it without
// a trusted signature.
func (e *Env) AddContentAddressed(t testing.TB, name string, files map[string][]byte) string {
	t.Helper()
	return e.must(t, "nix-store", "--add", e.writeTree(t, name, files))
}

// writeTree writes files into a fresh directory called name and returns it.
func (e *Env) writeTree(t testing.TB, name string, files map[string][]byte) string {
	t.Helper()
	parent, err := os.MkdirTemp(e.dir, "src-")
	if err != nil {
		t.Fatalf("nixtest: making a source directory: %v", err)
	}
	root := filepath.Join(parent, name)
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatalf("nixtest: making %s: %v", name, err)
	}
	for rel, data := range files {
		if !filepath.IsLocal(rel) {
			t.Fatalf("nixtest: file name %q is not a relative path inside the tree", rel)
		}
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatalf("nixtest: making the directory of %s: %v", rel, err)
		}
		if err := os.WriteFile(p, data, fileMode(rel)); err != nil {
			t.Fatalf("nixtest: writing %s: %v", rel, err)
		}
	}
	return root
}

// fileMode is the mode AddPath gives a file: Nix only records whether a file is
// executable, so scripts and everything under bin/ are, the rest are not.
func fileMode(rel string) os.FileMode {
	if strings.HasSuffix(rel, ".sh") || strings.HasPrefix(filepath.ToSlash(rel), "bin/") {
		return 0o755
	}
	return 0o644
}

// Sign adds a signature by the key in secretKeyFile to paths in the default store.
func (e *Env) Sign(t testing.TB, secretKeyFile string, paths ...string) {
	t.Helper()
	e.must(t, append([]string{"nix", "store", "sign", "--key-file", secretKeyFile}, paths...)...)
}

// CopyToCache writes paths and their closures into a file:// binary cache in dir,
// compressing NARs with compression ("xz", "zstd", "bzip2" or "none"). The narinfos
// carry the signatures the paths have in the default store.
func (e *Env) CopyToCache(t testing.TB, dir, compression string, paths ...string) {
	t.Helper()
	switch compression {
	case "xz", "zstd", "bzip2", "none":
	default:
		t.Fatalf("nixtest: compression %q is not one of xz, zstd, bzip2, none", compression)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatalf("nixtest: resolving cache directory %s: %v", dir, err)
	}
	url := "file://" + abs + "?compression=" + compression
	e.must(t, append([]string{"nix", "copy", "--to", url}, paths...)...)
}

// CopyFrom substitutes paths from the binary cache at url (file:// or http://) into
// a chroot store at root, trusting only publicKey, and returns Nix's output. It
// returns an error rather than failing the test, so tests can assert that Nix
// refuses a cache.
func (e *Env) CopyFrom(ctx context.Context, url, publicKey, root string, paths ...string) (string, error) {
	args := []string{"nix", "copy", "--from", url, "--to", root, "--option", "trusted-public-keys", publicKey}
	return e.Run(ctx, append(args, paths...)...)
}

// Verify checks paths in the chroot store at root: their contents against the
// recorded NarHash, and that each is signed by a key this Env generated (or is
// content-addressed). Nix 2.8 checks contents by default; it has no
// --check-contents flag.
func (e *Env) Verify(ctx context.Context, root string, paths ...string) (string, error) {
	if len(paths) == 0 {
		return "", errors.New("nixtest: Verify needs at least one path")
	}
	e.mu.Lock()
	keys := strings.Join(e.keys, " ")
	e.mu.Unlock()
	args := []string{"nix", "store", "verify", "--store", root, "--option", "trusted-public-keys", keys}
	return e.Run(ctx, append(args, paths...)...)
}

// NarHash returns the NAR hash Nix recorded for path in the default store, as
// "sha256:<nix32>" (the form narinfos use).
func (e *Env) NarHash(t testing.TB, path string) string {
	t.Helper()
	return e.must(t, "nix-store", "--query", "--hash", path)
}
