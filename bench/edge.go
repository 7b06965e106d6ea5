package main

import (
	"archive/tar"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
)

// The edge-case image: four layers of what real images hold and what makes
// a view work hard, at a size a walk takes about a second on the kernel.
// Every layer is generated while it is written, the same bytes each time.
const (
	edgeDirs    = 160
	edgeFiles   = 150 // regular files per directory of the base layer
	edgeLongs   = 100 // 255-byte names
	edgeDepth   = 19  // levels of 200-byte directory names: a ~3.8 KiB path
	edgeOpaqueN = 15  // every 15th directory is made opaque by layer 1
)

// edgeSizes cycle over the files: empty, inlined, a page, and a few that
// span many pages, so opens, reads and placement all count.
var edgeSizes = []int{0, 100, 1000, 4096, 10000, 30000, 2000, 64 << 10}

func edgeDir(d int) string { return fmt.Sprintf("d%03d", d) }

// edgeBody is the content of name as layer l writes it: distinct for each
// file and layer so that no two share an object, and incompressible.
func edgeBody(l int, name string, size int) []byte {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%s", l, name)
	r := rand.New(rand.NewPCG(h.Sum64(), uint64(size)))
	b := make([]byte, size)
	for i := 0; i+8 <= size; i += 8 {
		v := r.Uint64()
		for k := 0; k < 8; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

func edgeFile(l int, name string, n int) testimage.Entry {
	e := testimage.File(name, "")
	e.Body = edgeBody(l, name, edgeSizes[n%len(edgeSizes)])
	// Nanoseconds in every mtime, owners and modes of every kind.
	e.ModTime = testimage.DefaultModTime.Add(time.Duration(n)*time.Second + time.Duration(n*7919)%time.Second)
	e.UID, e.GID = 1000+n%3, 1000+n%5
	switch {
	case n%97 == 0:
		e.Mode = 0
	case n%89 == 0:
		e.Mode = 0o4755
	case n%13 == 0:
		e.Mode = 0o755
	}
	switch {
	case n%50 == 0:
		e = e.WithXattr("security.capability", testimage.FileCapability(13))
	case n%7 == 0:
		e = e.WithXattr("user.edge", name)
	}
	return e
}

func addAll(tw *tar.Writer, es ...testimage.Entry) error {
	for _, e := range es {
		if err := e.AddTo(tw); err != nil {
			return err
		}
	}
	return nil
}

// edgeLayers is the edge-case image, lowest layer first.
func edgeLayers() []testimage.Layer {
	return []testimage.Layer{{Stream: edgeBase}, {Stream: edgeChange}, {Stream: edgeReplace}, {Stream: edgeTop}}
}

// edgeBase holds every kind of entry: files, symlinks, hardlinks, FIFOs,
// devices, xattrs, setuid, sticky and mode-0 entries, long names and a
// deep path.
func edgeBase(tw *tar.Writer) error {
	for d := 0; d < edgeDirs; d++ {
		dir := edgeDir(d)
		mode := int64(0o755)
		if d%11 == 0 {
			mode = 0o1777
		}
		if err := addAll(tw, testimage.Dir(dir, mode)); err != nil {
			return err
		}
		for f := 0; f < edgeFiles; f++ {
			if err := addAll(tw, edgeFile(0, fmt.Sprintf("%s/f%04d", dir, f), d*edgeFiles+f)); err != nil {
				return err
			}
		}
		es := []testimage.Entry{
			testimage.Symlink(dir+"/s", "f0001"),
			testimage.Symlink(dir+"/up", "../"+edgeDir((d+1)%edgeDirs)+"/f0002"),
			testimage.Hardlink(dir+"/h1", dir+"/f0003"),
			testimage.Hardlink(dir+"/h2", dir+"/f0003"),
		}
		if d%10 == 0 {
			es = append(es, testimage.Fifo(dir+"/fifo"), testimage.CharDev(dir+"/null", 1, 3), testimage.BlockDev(dir+"/loop", 7, 0))
		}
		if err := addAll(tw, es...); err != nil {
			return err
		}
	}
	if err := addAll(tw, testimage.Dir("long", 0o755)); err != nil {
		return err
	}
	for i := 0; i < edgeLongs; i++ {
		name := fmt.Sprintf("%03d", i) + strings.Repeat("n", 252)
		if err := addAll(tw, edgeFile(0, "long/"+name, i)); err != nil {
			return err
		}
	}
	p := "deep"
	if err := addAll(tw, testimage.Dir(p, 0o755)); err != nil {
		return err
	}
	for i := 0; i < edgeDepth; i++ {
		p += "/" + fmt.Sprintf("%02d", i) + strings.Repeat("p", 198)
		if err := addAll(tw, testimage.Dir(p, 0o755), edgeFile(0, p+"/f", i)); err != nil {
			return err
		}
	}
	return nil
}

// edgeChange deletes, rewrites and adds files in every directory, makes
// some opaque and deletes one whole.
func edgeChange(tw *tar.Writer) error {
	for d := 0; d < edgeDirs; d++ {
		dir := edgeDir(d)
		if d == 5 {
			if err := addAll(tw, testimage.Whiteout("", dir)); err != nil {
				return err
			}
			continue
		}
		if err := addAll(tw, testimage.Dir(dir, 0o755)); err != nil {
			return err
		}
		if d%edgeOpaqueN == 0 {
			// No whiteouts beside the opaque marker: no builder writes them.
			if err := addAll(tw, testimage.Opaque(dir)); err != nil {
				return err
			}
			for f := 0; f < 30; f++ {
				if err := addAll(tw, edgeFile(1, fmt.Sprintf("%s/o%04d", dir, f), f)); err != nil {
					return err
				}
			}
			continue
		}
		for f := 0; f < edgeFiles; f++ {
			name := fmt.Sprintf("f%04d", f)
			switch f % 10 {
			case 1:
				if f == 1 {
					continue // the target of s stays
				}
				if err := addAll(tw, testimage.Whiteout(dir, name)); err != nil {
					return err
				}
			case 2:
				if err := addAll(tw, edgeFile(1, dir+"/"+name, d+f)); err != nil {
					return err
				}
			}
		}
		for f := 0; f < 20; f++ {
			if err := addAll(tw, edgeFile(1, fmt.Sprintf("%s/n%04d", dir, f), d*20+f)); err != nil {
				return err
			}
		}
		if err := addAll(tw, testimage.Hardlink(dir+"/nh", dir+"/n0000")); err != nil {
			return err
		}
	}
	return nil
}

// edgeReplace changes entries' types: files become directories, a symlink
// a file, the deleted directory a file; and deletes more.
func edgeReplace(tw *tar.Writer) error {
	for d := 0; d < edgeDirs; d += 3 {
		dir := edgeDir(d)
		if d == 5 || d%edgeOpaqueN == 0 {
			continue
		}
		es := []testimage.Entry{
			testimage.Dir(dir, 0o755),
			testimage.Dir(dir+"/f0004", 0o750).WithXattr("user.was", "file"),
			edgeFile(2, dir+"/f0004/inside", d),
			edgeFile(2, dir+"/s", d),
			testimage.Whiteout(dir, "f0013"),
			testimage.Whiteout(dir, "n0003"),
		}
		if err := addAll(tw, es...); err != nil {
			return err
		}
	}
	return addAll(tw, edgeFile(2, edgeDir(5), 5))
}

// edgeTop is a small layer on top, as an application's own layer is.
func edgeTop(tw *tar.Writer) error {
	if err := addAll(tw, testimage.Dir("app", 0o755)); err != nil {
		return err
	}
	for f := 0; f < 2000; f++ {
		if err := addAll(tw, edgeFile(3, fmt.Sprintf("app/a%04d", f), f)); err != nil {
			return err
		}
	}
	return addAll(tw, testimage.Whiteout("", edgeDir(7)))
}
