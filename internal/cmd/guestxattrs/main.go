// Command guestxattrs prints the xattrs of every entry under the current
// directory, symlinks not followed, as oracle.Walk reads them: the test
// guests' stand-in for getfattr, which busybox lacks. One line an xattr,
// the path as oracle.Tree keys it and the value in hex:
//
//	X|PATH|NAME|HEX
package main

import (
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/layerfs/layerfs/internal/oracle"
)

func main() {
	err := filepath.WalkDir(".", func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		xs, err := oracle.Xattrs(p)
		if err != nil {
			return err
		}
		names := make([]string, 0, len(xs))
		for name := range xs {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			fmt.Printf("X|%s|%s|%s\n", filepath.ToSlash(p), name, hex.EncodeToString([]byte(xs[name])))
		}
		return nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "guestxattrs:", err)
		os.Exit(1)
	}
}
