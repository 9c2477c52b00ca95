package p2p

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	ds "github.com/ipfs/go-datastore"
	dsq "github.com/ipfs/go-datastore/query"
	bolt "go.etcd.io/bbolt"
)

// recordsBucket holds the DHT's datastore entries: the provider records this node
// keeps for others, under the library's own keys.
var recordsBucket = []byte("dht")

// recordStore is the DHT's datastore on disk, so the provider records a server node
// holds for others survive its restart instead of waiting up to 22 hours for their
// providers to announce again.
type recordStore struct {
	db *bolt.DB
}

// openRecordStore opens (or creates) the record file. The records are a cache of what
// other nodes announce: a file that doesn't open is moved aside, with a warning, and
// a new one started, rather than keeping the daemon from starting.
func openRecordStore(path string, log *slog.Logger) (*recordStore, error) {
	opts := &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true}
	db, err := bolt.Open(path, 0o600, opts)
	if err != nil && !errors.Is(err, bolt.ErrTimeout) {
		aside := fmt.Sprintf("%s.broken-%d", path, time.Now().Unix())
		log.Warn("DHT record file unreadable; moving it aside and starting afresh", "file", path, "moved_to", aside, "err", err)
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("opening DHT record file %s: %w (moving it aside: %w)", path, err, rerr)
		}
		db, err = bolt.Open(path, 0o600, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("opening DHT record file %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(recordsBucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening DHT record file %s: %w", path, err)
	}
	return &recordStore{db: db}, nil
}

func (s *recordStore) Get(_ context.Context, key ds.Key) (value []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(recordsBucket).Get(key.Bytes())
		if v == nil {
			return ds.ErrNotFound
		}
		value = bytes.Clone(v)
		return nil
	})
	return value, err
}

func (s *recordStore) Has(ctx context.Context, key ds.Key) (bool, error) {
	_, err := s.GetSize(ctx, key)
	if errors.Is(err, ds.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (s *recordStore) GetSize(_ context.Context, key ds.Key) (size int, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(recordsBucket).Get(key.Bytes())
		if v == nil {
			size = -1 // the datastore convention for a missing key
			return ds.ErrNotFound
		}
		size = len(v)
		return nil
	})
	return size, err
}

// Query reads the entries under the query's prefix in one read transaction, copied
// out so no transaction outlives the call, then lets the library apply filters,
// orders and limits.
func (s *recordStore) Query(_ context.Context, q dsq.Query) (dsq.Results, error) {
	prefix := ds.NewKey(q.Prefix).String()
	if prefix != "/" {
		prefix += "/"
	}
	var entries []dsq.Entry
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(recordsBucket).Cursor()
		for k, v := c.Seek([]byte(prefix)); k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Next() {
			e := dsq.Entry{Key: string(k), Size: len(v)}
			if !q.KeysOnly {
				e.Value = bytes.Clone(v)
			}
			entries = append(entries, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading DHT records: %w", err)
	}
	q2 := q
	q2.Prefix = "" // already applied
	return dsq.NaiveQueryApply(q2, dsq.ResultsWithEntries(q, entries)), nil
}

func (s *recordStore) Put(_ context.Context, key ds.Key, value []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(recordsBucket).Put(key.Bytes(), value)
	})
}

func (s *recordStore) Delete(_ context.Context, key ds.Key) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(recordsBucket).Delete(key.Bytes())
	})
}

func (s *recordStore) Sync(context.Context, ds.Key) error { return s.db.Sync() }

func (s *recordStore) Batch(context.Context) (ds.Batch, error) { return &recordBatch{s: s}, nil }

func (s *recordStore) Close() error { return s.db.Close() }

// recordBatch collects writes and applies them in one transaction at Commit.
type recordBatch struct {
	s   *recordStore
	ops []recordOp
}

type recordOp struct {
	key    []byte
	value  []byte
	delete bool
}

func (b *recordBatch) Put(_ context.Context, key ds.Key, value []byte) error {
	b.ops = append(b.ops, recordOp{key: key.Bytes(), value: bytes.Clone(value)})
	return nil
}

func (b *recordBatch) Delete(_ context.Context, key ds.Key) error {
	b.ops = append(b.ops, recordOp{key: key.Bytes(), delete: true})
	return nil
}

func (b *recordBatch) Commit(context.Context) error {
	return b.s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(recordsBucket)
		for _, op := range b.ops {
			var err error
			if op.delete {
				err = bk.Delete(op.key)
			} else {
				err = bk.Put(op.key, op.value)
			}
			if err != nil {
				return fmt.Errorf("writing DHT records: %w", err)
			}
		}
		return nil
	})
}
