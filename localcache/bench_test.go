package localcache

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkPutChunks stores 64 KiB incompressible objects in batches of
// 256, through Cache and through a naive layout that keys each value by its
// hash, and reports throughput, how much file each payload byte costs, and
// (where /proc/self/io exists) how many bytes were written for each one.
// Run with enough chunks for the file's 16 MiB growth step not to dominate
// the ratio, e.g. -benchtime=4000x.
func BenchmarkPutChunks(b *testing.B) {
	const objSize = 64 << 10
	const batch = 256

	b.Run("sequential-keys", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "state.db")
		c, err := Open(path, Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		ctx := context.Background()
		runPutBench(b, objSize, batch, func(puts []ChunkPut) error { return c.PutChunks(ctx, puts) })
		reportSize(b, path, c.db, objSize)
	})

	b.Run("hash-keys-baseline", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "naive.db")
		db, err := bolt.Open(path, 0o600, &bolt.Options{
			InitialMmapSize: defaultInitialMmapSize,
			FreelistType:    bolt.FreelistMapType,
			NoFreelistSync:  true,
		})
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		name := []byte("chunks")
		if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket(name); return err }); err != nil {
			b.Fatal(err)
		}
		runPutBench(b, objSize, batch, func(puts []ChunkPut) error {
			return db.Update(func(tx *bolt.Tx) error {
				bk := tx.Bucket(name)
				for _, p := range puts {
					if bk.Get(p.ID[:]) != nil {
						continue
					}
					if err := bk.Put(p.ID[:], p.Obj); err != nil {
						return err
					}
				}
				return nil
			})
		})
		reportSize(b, path, db, objSize)
	})
}

// runPutBench feeds b.N distinct objects to put, batch at a time. Making
// the objects and hashing them is kept off the clock.
func runPutBench(b *testing.B, objSize, batch int, put func([]ChunkPut) error) {
	rng := rand.New(rand.NewPCG(1, 2))
	pool := make([]byte, 8<<20)
	for i := 0; i+8 <= len(pool); i += 8 {
		binary.LittleEndian.PutUint64(pool[i:], rng.Uint64())
	}
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, objSize)
	}
	puts := make([]ChunkPut, 0, batch)
	written, haveIO := bytesWritten()
	b.SetBytes(int64(objSize))
	b.ResetTimer()
	for done := 0; done < b.N; {
		b.StopTimer()
		puts = puts[:0]
		for i := 0; i < batch && done+i < b.N; i++ {
			buf := bufs[i]
			off := rng.IntN(len(pool) - objSize)
			copy(buf, pool[off:off+objSize])
			binary.LittleEndian.PutUint64(buf, uint64(done+i))
			puts = append(puts, ChunkPut{ID: sha256.Sum256(buf), Obj: buf})
		}
		b.StartTimer()
		if err := put(puts); err != nil {
			b.Fatal(err)
		}
		done += len(puts)
	}
	b.StopTimer()
	if after, ok := bytesWritten(); ok && haveIO {
		b.ReportMetric(float64(after-written)/(float64(b.N)*float64(objSize)), "written/payload")
	}
}

// bytesWritten returns the bytes this process has passed to write calls
// (wchar in /proc/self/io), which is what bbolt's copy-on-write costs.
func bytesWritten() (int64, bool) {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("wchar: ")); ok {
			n, err := strconv.ParseInt(string(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

func reportSize(b *testing.B, path string, db *bolt.DB, objSize int) {
	payload := float64(b.N) * float64(objSize)
	var used int64
	if err := db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil }); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(fileSize(b, path))/payload, "file/payload")
	b.ReportMetric(float64(used)/payload, "pages/payload")
}
