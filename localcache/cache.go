// Package localcache is the daemon's on-disk state: stored chunk objects,
// manifests, verified-NAR marks, cached narinfos and NAR routes, all in one
// bbolt file.
//
// Chunk bodies are stored under sequential 8-byte keys with a small
// ID -> sequence index beside them. Keying 64 KiB values by their hash
// scatters inserts across the tree, and bbolt's copy-on-write then rewrites
// neighbouring values on every insert; appending at the right edge keeps
// the file close to the payload size. Writes from concurrent callers are
// grouped into shared transactions so that one fsync covers many puts.
//
// Every method is safe for concurrent use. Read methods copy values out and
// end their transaction before returning, because a long read transaction
// blocks the remap bbolt needs when the file grows, and with it every
// writer. ForEachChunk is the one exception: it holds a read transaction
// while calling its callback.
package localcache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrLocked is returned by Open when the file lock could not be taken within
// Options.Timeout, which almost always means another daemon holds it.
var ErrLocked = errors.New("localcache: database is locked (is another shoal daemon running with this state directory?)")

// ErrSchemaTooNew is returned by Open for a file written by a newer shoal
// whose layout this version does not understand.
var ErrSchemaTooNew = errors.New("localcache: database schema is newer than this shoal understands")

// schemaVersion is the layout version written into new files. Bump it, and
// teach Open to migrate, whenever a bucket's key or value format changes.
const schemaVersion uint32 = 1

const (
	defaultInitialMmapSize = 256 << 20
	defaultTimeout         = 5 * time.Second
)

// Bucket and meta key names. They are part of the on-disk format.
var (
	bucketMeta       = []byte("meta")
	bucketChunkIndex = []byte("chunk-index") // chunk ID -> 8-byte big-endian sequence
	bucketChunkBody  = []byte("chunk-body")  // sequence -> chunk ID || stored object
	bucketManifests  = []byte("manifests")   // NAR hash key -> manifest bytes
	bucketVerified   = []byte("verified")    // NAR hash key -> manifest digest
	bucketNarInfo    = []byte("narinfo")     // store path hash part -> encoded NarInfoEntry
	bucketRoutes     = []byte("routes")      // NAR hash key -> encoded NarRoute
	bucketPackages   = []byte("packages")    // package name -> NAR hash key of its latest NAR here
	bucketNarUsed    = []byte("nar-used")    // NAR hash key -> 8-byte tick of its last use (see budget.go)
	bucketPins       = []byte("pins")        // store path hash part -> encoded Pin

	keySchema     = []byte("schema")
	keyChunkCount = []byte("chunk-count")
	keyChunkBytes = []byte("chunk-bytes")
)

func allBuckets() [][]byte {
	return [][]byte{bucketMeta, bucketChunkIndex, bucketChunkBody, bucketManifests, bucketVerified, bucketNarInfo, bucketRoutes, bucketPackages, bucketNarUsed, bucketPins, bucketLocations, bucketSeeded}
}

// Options tunes Open. The zero value gives sensible defaults.
type Options struct {
	// InitialMmapSize is how much address space to map up front (default
	// 256 MiB). While the file stays below it, growing the file never has
	// to wait for open read transactions.
	InitialMmapSize int
	// Timeout bounds the wait for the file lock (default 5s). A daemon that
	// cannot get the lock should fail fast rather than hang at start-up.
	Timeout time.Duration
	// Budget, when positive, bounds the bytes the file may use: before chunks
	// are added, least recently used chunks that no pin or lease protects are
	// evicted so the data stays under it and freed pages are reused instead of
	// growing the file (see budget.go).
	Budget int64
	// Logger receives eviction and budget warnings (default: discarded).
	Logger *slog.Logger
}

// Cache is the daemon's bbolt-backed state. Create it with Open.
type Cache struct {
	db     *bolt.DB
	w      writer
	budget budget
	leases leases
	log    *slog.Logger
}

// Open opens or creates the cache file at path, creating any missing
// buckets. It refuses files whose schema is newer than this code knows, and
// damaged ones with ErrCorrupt: their page tree is walked with every bound
// checked before bbolt, which trusts its pages and panics on damaged ones, maps
// the file.
func Open(path string, opts Options) (c *Cache, err error) {
	if opts.InitialMmapSize <= 0 {
		opts.InitialMmapSize = defaultInitialMmapSize
	}
	if opts.Timeout <= 0 {
		opts.Timeout = defaultTimeout
	}
	if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
		err := withFileLock(path, opts.Timeout, func() error { return checkFile(path, nil) })
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("opening cache %s: no file lock after %s: %w", path, opts.Timeout, ErrLocked)
		}
		if err != nil {
			return nil, fmt.Errorf("opening cache %s: %w", path, err)
		}
	}
	// What the walk can't see (a damaged key inside a sound page) may still make
	// bbolt panic here; it is reported as damage, not a crash.
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("opening cache %s: %w: %v", path, ErrCorrupt, r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         opts.Timeout,
		InitialMmapSize: opts.InitialMmapSize,
		FreelistType:    bolt.FreelistMapType,
		NoFreelistSync:  true,
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("opening cache %s: no file lock after %s: %w", path, opts.Timeout, ErrLocked)
		}
		return nil, fmt.Errorf("opening cache %s: %w", path, err)
	}
	if opts.Budget > 0 {
		// Grow the file in steps small against the budget, so the step itself
		// cannot carry the file past it.
		db.AllocSize = int(min(max(opts.Budget/64, 64<<10), 16<<20))
	}
	if err := db.Update(initSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening cache %s: %w", path, err)
	}
	c = &Cache{db: db, log: opts.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.w.init()
	c.budget.limit = opts.Budget
	return c, nil
}

// initSchema stamps a fresh file with the schema version, checks the
// version of an existing one, and creates missing buckets.
func initSchema(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		empty := true
		_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
		if !empty {
			return errors.New("file holds a bbolt database that is not a shoal cache (no meta bucket)")
		}
		var err error
		if meta, err = tx.CreateBucket(bucketMeta); err != nil {
			return fmt.Errorf("creating meta bucket: %w", err)
		}
		if err := meta.Put(keySchema, binary.BigEndian.AppendUint32(nil, schemaVersion)); err != nil {
			return fmt.Errorf("writing schema version: %w", err)
		}
	}
	v := meta.Get(keySchema)
	if len(v) != 4 {
		return fmt.Errorf("schema version record is %d bytes, want 4", len(v))
	}
	if got := binary.BigEndian.Uint32(v); got > schemaVersion {
		return fmt.Errorf("file has schema %d, this shoal knows up to %d (upgrade shoal or remove the state file): %w", got, schemaVersion, ErrSchemaTooNew)
	} else if got == 0 {
		return fmt.Errorf("invalid schema version 0")
	}
	for _, name := range allBuckets() {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("creating bucket %s: %w", name, err)
		}
	}
	return nil
}

// Close waits for running transactions and closes the file. Calls made
// after Close fail.
func (c *Cache) Close() error {
	if err := c.db.Close(); err != nil {
		return fmt.Errorf("closing cache %s: %w", c.db.Path(), err)
	}
	return nil
}

// Stats summarises the cache's contents.
type Stats struct {
	Chunks     int
	ChunkBytes int64 // stored (compressed) object bytes
	Manifests  int
	NarInfos   int // positive and negative, expired ones until Prune drops them
	Routes     int
	FileBytes  int64 // size of the file on disk; bbolt files never shrink
}

// Stats reports counts and sizes. Chunk totals come from counters kept
// with every write; the smaller buckets are counted by walking them.
func (c *Cache) Stats() (Stats, error) {
	var s Stats
	err := c.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		s.Chunks = int(getCounter(meta, keyChunkCount))
		s.ChunkBytes = int64(getCounter(meta, keyChunkBytes))
		s.Manifests = tx.Bucket(bucketManifests).Stats().KeyN
		s.NarInfos = tx.Bucket(bucketNarInfo).Stats().KeyN
		s.Routes = tx.Bucket(bucketRoutes).Stats().KeyN
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("reading cache stats: %w", err)
	}
	fi, err := os.Stat(c.db.Path())
	if err != nil {
		return Stats{}, fmt.Errorf("reading cache stats: %w", err)
	}
	s.FileBytes = fi.Size()
	return s, nil
}

func getCounter(meta *bolt.Bucket, key []byte) uint64 {
	v := meta.Get(key)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// addCounter adjusts a counter stored in the meta bucket, clamping at zero
// so a damaged counter cannot wrap around.
func addCounter(meta *bolt.Bucket, key []byte, delta int64) error {
	cur := int64(getCounter(meta, key)) + delta
	if cur < 0 {
		cur = 0
	}
	if err := meta.Put(key, binary.BigEndian.AppendUint64(nil, uint64(cur))); err != nil {
		return fmt.Errorf("updating counter %s: %w", key, err)
	}
	return nil
}

// checkKey rejects keys bbolt cannot store, before they reach a shared
// write transaction where the failure would cost the other writers a retry.
func checkKey(what, key string) error {
	if key == "" {
		return fmt.Errorf("%s: empty key", what)
	}
	if len(key) > bolt.MaxKeySize {
		return fmt.Errorf("%s: key of %d bytes exceeds %d", what, len(key), bolt.MaxKeySize)
	}
	return nil
}
