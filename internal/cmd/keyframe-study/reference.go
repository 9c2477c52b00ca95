package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/klauspost/compress/zstd"
)

// cliRows has the zstd CLI encode the chunks at idx one frame each at -19 (one
// process over one file per chunk, writing one file each), without a
// dictionary and with one it trains from train (nil: no dictionary row). Their bytes
// are scaled to all chunks by the Go default level's bytes on the same sample.
func cliRows(ctx context.Context, chunks [][]byte, idx []int, train [][]byte, dictSize int, goDefault int64) ([]row, error) {
	tmp, err := os.MkdirTemp("", "keyframe-study-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	sample := pick(chunks, idx)
	files, err := writeFiles(tmp, "s", sample)
	if err != nil {
		return nil, err
	}
	sampleDefault, err := defaultBytes(sample)
	if err != nil {
		return nil, err
	}
	label := fmt.Sprintf(", per chunk (sample of %d, scaled)", len(sample))

	var rows []row
	var dictBytes int64
	r, err := cliEncode(ctx, "zstd CLI -19"+label, []string{"-19"}, files, sample, nil)
	if err != nil {
		return nil, err
	}
	rows = append(rows, r)
	if train != nil {
		tfiles, err := writeFiles(tmp, "t", train)
		if err != nil {
			return nil, err
		}
		dictPath := filepath.Join(tmp, "dict")
		args := append([]string{"--train", "-q", "--maxdict=" + strconv.Itoa(dictSize), "-o", dictPath}, tfiles...)
		if out, err := exec.CommandContext(ctx, "zstd", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("zstd --train: %w: %s", err, out)
		}
		d, err := os.ReadFile(dictPath)
		if err != nil {
			return nil, err
		}
		r, err := cliEncode(ctx, "zstd CLI -19, dictionary (zstd --train)"+label, []string{"-19", "-D", dictPath}, files, sample, d)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r)
		dictBytes = int64(len(d))
	}
	for i := range rows {
		rows[i].stored = scaled(rows[i].stored, sampleDefault, goDefault)
	}
	if dictBytes > 0 {
		rows[1].stored += dictBytes // stored once, not scaled with the chunks
	}
	return rows, nil
}

func writeFiles(dir, prefix string, chunks [][]byte) ([]string, error) {
	var names []string
	for i, c := range chunks {
		name := filepath.Join(dir, fmt.Sprintf("%s%06d", prefix, i))
		if err := os.WriteFile(name, c, 0o600); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}

// cliEncode runs zstd with args (files to encode one by one into out), then decodes
// the frames it wrote as a client decodes chunk objects (knowing the dictionary d,
// nil: none) and checks them against sample, the files' contents.
func cliEncode(ctx context.Context, name string, args []string, files []string, sample [][]byte, d []byte) (row, error) {
	r := row{name: name}
	out, err := os.MkdirTemp(filepath.Dir(files[0]), "out-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(out)
	args = append(append([]string{"-q", "-T1", "--output-dir-flat", out}, args...), files...)
	cmd := exec.CommandContext(ctx, "zstd", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return r, fmt.Errorf("%s: %w", name, err)
	}
	r.encode = time.Since(start)
	objs := make([][]byte, len(files))
	for i, f := range files {
		if objs[i], err = os.ReadFile(filepath.Join(out, filepath.Base(f)+".zst")); err != nil {
			return r, err
		}
	}
	decode, done, err := newDecoder(d)
	if err != nil {
		return r, err
	}
	defer done()
	r.stored, r.raw, r.decode, err = decodeAll(decode, objs, sample)
	if err != nil {
		return r, fmt.Errorf("%s: %w", name, err)
	}
	return r, nil
}

// wholeNARs compresses each NAR whole with `zstd -level --long=27`, the reference a
// per-chunk encoding gives up against, and decodes the result with the Go decoder.
func wholeNARs(ctx context.Context, c *corpus, level int) (row, error) {
	r := row{name: fmt.Sprintf("whole NAR, zstd CLI -%d --long=27", level)}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<27), zstd.WithDecoderMaxMemory(1<<40))
	if err != nil {
		return r, err
	}
	defer dec.Close()
	for _, ni := range c.nars {
		rc, err := c.src.OpenNAR(ctx, ni)
		if err != nil {
			return r, err
		}
		args := []string{"-q", "-c", "-T1", "-" + strconv.Itoa(level), "--long=27"}
		if level > 19 {
			args = append(args, "--ultra")
		}
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, "zstd", args...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = rc, &out, os.Stderr
		start := time.Now()
		err = cmd.Run()
		r.encode += time.Since(start)
		rc.Close()
		if err != nil {
			return r, fmt.Errorf("compressing %s whole: %w", ni.StorePath, err)
		}
		r.stored += int64(out.Len())
		r.raw += int64(ni.NarSize)
		buf := make([]byte, 0, ni.NarSize)
		var fastest time.Duration
		for range minDecodePasses {
			start = time.Now()
			got, err := dec.DecodeAll(out.Bytes(), buf)
			took := time.Since(start)
			if err != nil {
				return r, fmt.Errorf("decoding %s whole: %w", ni.StorePath, err)
			}
			if sha256.Sum256(got) != ni.NarHash {
				return r, fmt.Errorf("%s compressed whole decodes to other bytes", ni.StorePath)
			}
			if fastest == 0 || took < fastest {
				fastest = took
			}
		}
		r.decode += fastest
	}
	return r, nil
}

// xzNARs returns the xz NARs' row (their FileSize, and decode throughput through the
// decoder shoal reads xz caches with) and their bytes; nil and 0 when the corpus has
// no xz NAR for one of the paths.
func xzNARs(ctx context.Context, c *corpus) (*row, int64, error) {
	if c.xzCache == nil {
		return nil, 0, nil
	}
	r := &row{name: "xz NAR (the xz cache's FileSize)"}
	for _, ni := range c.xz {
		if ni == nil {
			return nil, 0, nil
		}
	}
	for _, ni := range c.xz {
		start := time.Now()
		rc, err := c.xzCache.OpenNAR(ctx, ni)
		if err != nil {
			return nil, 0, err
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		r.decode += time.Since(start)
		if err != nil {
			return nil, 0, fmt.Errorf("decompressing %s: %w", ni.URL, err)
		}
		r.stored += int64(ni.FileSize)
		r.raw += n
	}
	return r, r.stored, nil
}

func printTable(rows []row, goDefault, xzBytes int64) {
	fmt.Println()
	fmt.Println("| encoding | stored MB | / xz NAR | / Go default | encode MB/s | decode MB/s |")
	fmt.Println("|---|---|---|---|---|---|")
	rate := func(n int64, d time.Duration) string {
		if d == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f", float64(n)/1e6/d.Seconds())
	}
	for _, r := range rows {
		vsXZ := "–"
		if xzBytes > 0 {
			vsXZ = fmt.Sprintf("%.3f", float64(r.stored)/float64(xzBytes))
		}
		fmt.Printf("| %s | %.2f | %s | %.3f | %s | %s |\n", r.name, float64(r.stored)/1e6, vsXZ,
			float64(r.stored)/float64(goDefault), rate(r.raw, r.encode), rate(r.raw, r.decode))
	}
}
