package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/shoal-nix/shoal"
)

// tempPrefix marks files that Put has not yet renamed into place. List skips
// them so that half-written objects never show up as keys.
const tempPrefix = ".shoal-tmp-"

// fileBackend keeps objects as files under a root directory, laid out like
// the keys, so that the directory can be served as-is by any static web
// server or CDN.
type fileBackend struct {
	root string // absolute, cleaned
	url  string
}

func newFileBackend(dir string) (*fileBackend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("blob: resolving directory %q: %w", dir, err)
	}
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}
	return &fileBackend{root: abs, url: u.String()}, nil
}

func (f *fileBackend) String() string { return f.url }

func (f *fileBackend) path(key string) string {
	return filepath.Join(f.root, filepath.FromSlash(key))
}

func (f *fileBackend) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	file, err := os.Open(f.path(key))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("opening %s in %s: %w", key, f.url, shoal.ErrNotFound)
		}
		return nil, fmt.Errorf("opening %s in %s: %w", key, f.url, err)
	}
	st, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("opening %s in %s: %w", key, f.url, err)
	}
	if st.IsDir() {
		file.Close()
		return nil, fmt.Errorf("opening %s in %s: is a directory: %w", key, f.url, shoal.ErrNotFound)
	}
	return file, nil
}

func (f *fileBackend) Exists(ctx context.Context, key string) (bool, error) {
	if err := ValidateKey(key); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	st, err := os.Stat(f.path(key))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("checking %s in %s: %w", key, f.url, err)
	}
	return !st.IsDir(), nil
}

// Put writes to a temporary file in the destination directory and renames it
// over the key, so readers (including a web server serving the directory)
// never see a partial object and concurrent Puts of the same key leave one
// complete copy. The file and the directory are fsynced so that a crash
// cannot leave a renamed but empty object behind.
func (f *fileBackend) Put(ctx context.Context, key string, data []byte) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dst := f.path(key)
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("storing %s in %s: creating directory: %w", key, f.url, err)
	}
	tmp, err := os.CreateTemp(dir, tempPrefix+path.Base(key)+"-*")
	if err != nil {
		return fmt.Errorf("storing %s in %s: %w", key, f.url, err)
	}
	tmpName := tmp.Name()
	renamed := false
	defer func() {
		if !renamed {
			os.Remove(tmpName)
		}
	}()
	if err := writeAndSync(tmp, data); err != nil {
		return fmt.Errorf("storing %s in %s: %w", key, f.url, err)
	}
	if err := os.Rename(tmpName, dst); err != nil {
		return fmt.Errorf("storing %s in %s: %w", key, f.url, err)
	}
	renamed = true
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("storing %s in %s: syncing directory: %w", key, f.url, err)
	}
	return nil
}

// writeAndSync fills and closes a temporary file. Objects are made
// world-readable because stores are meant to be served by web servers
// running as other users.
func writeAndSync(tmp *os.File, data []byte) error {
	_, err := tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// List walks only the directories that can hold keys with the prefix and
// visits siblings ordered by their key form (directories as "name/"), which
// yields keys in globally sorted order without collecting them first; a
// chunk store can hold millions of keys.
func (f *fileBackend) List(ctx context.Context, prefix string, fn func(key string) error) error {
	if err := validatePrefix(prefix); err != nil {
		return err
	}
	start := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = prefix[:i]
	}
	return f.walk(ctx, start, prefix, fn)
}

func (f *fileBackend) walk(ctx context.Context, dirKey, prefix string, fn func(key string) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := os.ReadDir(f.path(dirKey))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			// A missing directory simply holds no keys.
			return nil
		}
		return fmt.Errorf("listing %s in %s: %w", dirKey, f.url, err)
	}
	type entry struct {
		sortKey string
		key     string
		dir     bool
	}
	list := make([]entry, 0, len(entries))
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, tempPrefix) {
			continue
		}
		key := name
		if dirKey != "" {
			key = dirKey + "/" + name
		}
		sk := name
		if e.IsDir() {
			sk += "/"
		}
		list = append(list, entry{sortKey: sk, key: key, dir: e.IsDir()})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].sortKey < list[j].sortKey })
	for _, e := range list {
		if e.dir {
			d := e.key + "/"
			if !strings.HasPrefix(d, prefix) && !strings.HasPrefix(prefix, d) {
				continue
			}
			if err := f.walk(ctx, e.key, prefix, fn); err != nil {
				return err
			}
			continue
		}
		if !strings.HasPrefix(e.key, prefix) {
			continue
		}
		if err := fn(e.key); err != nil {
			return err
		}
	}
	return nil
}

func (f *fileBackend) Stat(ctx context.Context, key string) (Info, error) {
	if err := ValidateKey(key); err != nil {
		return Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	st, err := os.Stat(f.path(key))
	if err == nil && st.IsDir() {
		err = fs.ErrNotExist
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Info{}, fmt.Errorf("stat %s in %s: %w", key, f.url, shoal.ErrNotFound)
		}
		return Info{}, fmt.Errorf("stat %s in %s: %w", key, f.url, err)
	}
	return Info{Size: st.Size(), ModTime: st.ModTime()}, nil
}

func (f *fileBackend) Touch(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	if err := os.Chtimes(f.path(key), now, now); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("touching %s in %s: %w", key, f.url, shoal.ErrNotFound)
		}
		return fmt.Errorf("touching %s in %s: %w", key, f.url, err)
	}
	return nil
}

// Delete removes the file; empty fan-out directories are left in place,
// since a publish may be about to write into them.
func (f *fileBackend) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Remove(f.path(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting %s in %s: %w", key, f.url, err)
	}
	return nil
}

// OpenRange reads the range with pread calls on the open file, so concurrent
// ranges of one pack need no seeking and share nothing.
func (f *fileBackend) OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if err := checkRange(key, off, n); err != nil {
		return nil, err
	}
	rc, err := f.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	file := rc.(*os.File)
	st, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("opening %s in %s: %w", key, f.url, err)
	}
	if off >= st.Size() {
		file.Close()
		return nil, fmt.Errorf("reading %d bytes at %d of %s in %s (%d bytes): %w", n, off, key, f.url, st.Size(), ErrRange)
	}
	what := fmt.Sprintf("reading %d bytes at %d of %s in %s", n, off, key, f.url)
	return newExactReader(sectionCloser{io.NewSectionReader(file, off, n), file}, n, what), nil
}

type sectionCloser struct {
	*io.SectionReader
	io.Closer
}
