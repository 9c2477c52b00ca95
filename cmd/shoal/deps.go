package main

// Temporary: pins dependencies in go.mod while packages are being written.
import (
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/nix-community/go-nix/pkg/narinfo/signature"
	_ "github.com/nix-community/go-nix/pkg/nixbase32"
	_ "github.com/schollz/progressbar/v3"
	_ "github.com/ulikunitz/xz"
	_ "github.com/urfave/cli/v2"
	_ "github.com/zeebo/blake3"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/sync/singleflight"
	_ "golang.org/x/term"
)

func main() {}
