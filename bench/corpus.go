package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/layerfs/layerfs/internal/debimage"
	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// corpusVersion names the cached synthetic images and unpacks; it changes
// whenever what they hold does.
const corpusVersion = "v2"

// storesVersion names the stores; it changes whenever the images imported
// into them do.
const storesVersion = "s2"

// image is one image of the corpus, ready in every form a case needs.
type image struct {
	name string
	// layout is an OCI image layout holding the image as name.
	layout string
	// blobs are the layer blobs, lowest first.
	blobs []string
	// unpacked are the layers unpacked by oracle.UnpackLayer, lowest first:
	// what kernel overlayfs and fuse-overlayfs stack.
	unpacked []string
}

// sizes of the synthetic images; -quick shrinks them.
type sizes struct {
	layers, perLayer   int
	bigDir             int
	depth              int
	chain, chainLayers int
}

func corpusSizes(quick bool) sizes {
	if quick {
		return sizes{layers: 10, perLayer: 2000, bigDir: 5000, depth: 100, chain: 2000, chainLayers: 100}
	}
	return sizes{layers: 10, perLayer: 100000, bigDir: 100000, depth: 100, chain: 20000, chainLayers: 1000}
}

// corpus is every image the cases run on, and the stores holding them.
type corpus struct {
	debian *image
	big    string // the 64 MiB file, relative to the image root
	synth  *image
	// edge is the edge-case image (edgeLayers).
	edge   *image
	bigDir *image
	deep   *image
	// chain is one layer of a hardlink chain, chainLayers a chain of
	// links each in a layer of its own over the one it names.
	chain, chainLayers *image
	shared             []*image // four images sharing the Debian base layer
	// entries the merged views show, the root not counted
	debianEntries, synthEntries int
	// store holds every image above but shared; nobodyStore the Debian
	// image only, owned by the unprivileged user; sharedStore the four
	// images sharing a base.
	store, nobodyStore, sharedStore string
}

// buildCorpus makes, or finds in the cache, everything the cases need.
// Stores are kept per layerfs binary, so a rebuilt binary imports afresh.
func (b *bench) buildCorpus(ctx context.Context) (*corpus, error) {
	c := &corpus{}
	deb, err := debimage.Build(ctx, filepath.Join(b.cache, "debian"))
	if err != nil {
		return nil, err
	}
	c.big = deb.BigFile
	c.debian = &image{name: debimage.Ref, layout: deb.Layout}
	for _, l := range deb.Layers {
		c.debian.blobs = append(c.debian.blobs, l.Path)
	}
	sz := corpusSizes(b.quick)
	suffix := corpusVersion
	if b.quick {
		suffix += "-quick"
	}
	c.synth = &image{name: "synth-" + suffix}
	c.edge = &image{name: "edge-" + suffix}
	c.bigDir = &image{name: "bigdir-" + suffix}
	c.deep = &image{name: "deep-" + suffix}
	c.chain = &image{name: "chain-" + suffix}
	c.chainLayers = &image{name: "chain-layers-" + suffix}
	for _, s := range []struct {
		img    *image
		layers []testimage.Layer
	}{
		{c.synth, synthLayers(sz)},
		{c.edge, edgeLayers()},
		{c.bigDir, []testimage.Layer{{Stream: bigDirStream(sz.bigDir)}}},
		{c.deep, []testimage.Layer{{Entries: deepEntries(sz.depth)}}},
		{c.chain, []testimage.Layer{{Entries: chainEntries(sz.chain)}}},
		{c.chainLayers, chainLayers(sz.chainLayers)},
	} {
		if err := b.writeImage(s.img, s.layers); err != nil {
			return nil, err
		}
	}
	if c.shared, err = b.sharedImages(c.debian); err != nil {
		return nil, err
	}
	for _, img := range []*image{c.debian, c.synth, c.edge, c.bigDir, c.deep} {
		if err := b.unpack(img); err != nil {
			return nil, err
		}
	}
	for _, img := range c.shared[1:] {
		if err := b.unpack(img); err != nil {
			return nil, err
		}
	}
	if c.debianEntries, err = b.entries(c.debian); err != nil {
		return nil, err
	}
	if c.synthEntries, err = b.entries(c.synth); err != nil {
		return nil, err
	}
	if err := b.stores(c); err != nil {
		return nil, err
	}
	return c, nil
}

// entries counts what img's merged view shows, on kernel overlayfs, once:
// the count is cached beside the unpacked layers.
func (b *bench) entries(img *image) (int, error) {
	cached := filepath.Join(filepath.Dir(img.unpacked[len(img.unpacked)-1]), "entries-"+img.name)
	if data, err := os.ReadFile(cached); err == nil {
		return strconv.Atoi(string(data))
	}
	mp, err := b.mountpoint("count")
	if err != nil {
		return 0, err
	}
	umount, err := oracle.Mount(img.unpacked, mp)
	if err != nil {
		return 0, err
	}
	n := -1
	err = filepath.WalkDir(mp, func(string, fs.DirEntry, error) error {
		n++
		return nil
	})
	if uerr := umount(); err == nil {
		err = uerr
	}
	if err != nil {
		return 0, fmt.Errorf("count entries of %s: %w", img.name, err)
	}
	return n, os.WriteFile(cached, []byte(strconv.Itoa(n)), 0o644)
}

// synthLayers is the million-entry image: Synthetic's layers, each but the
// lowest also whiting out one file per directory of the layer beneath and
// making one directory opaque.
func synthLayers(sz sizes) []testimage.Layer {
	ls := testimage.Synthetic(sz.layers, sz.perLayer, testimage.Gzip)
	dirs := (sz.perLayer + 999) / 1000
	for i := 1; i < len(ls); i++ {
		opaque := (i * 7) % dirs
		for d := 0; d < dirs; d++ {
			f := d*1000 + i
			// Kernel overlayfs lists the whiteouts of an opaque
			// directory, which no image builder writes.
			if f >= sz.perLayer || d == opaque {
				continue
			}
			dir := fmt.Sprintf("dir%05d", d)
			ls[i].Entries = append(ls[i].Entries, testimage.Whiteout(dir, fmt.Sprintf("l%02d-f%07d", i-1, f)))
		}
		ls[i].Entries = append(ls[i].Entries, testimage.Opaque(fmt.Sprintf("dir%05d", opaque)))
	}
	return ls
}

func bigDirStream(n int) func(*tar.Writer) error {
	return func(tw *tar.Writer) error {
		if err := testimage.Dir("big", 0o755).AddTo(tw); err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			if err := testimage.File(fmt.Sprintf("big/entry-%07d", i), "").AddTo(tw); err != nil {
				return err
			}
		}
		return nil
	}
}

// deepEntries is a chain of depth directories, with one small file in each.
func deepEntries(depth int) []testimage.Entry {
	var es []testimage.Entry
	p := ""
	for i := 0; i < depth; i++ {
		p = filepath.Join(p, fmt.Sprintf("d%03d", i))
		es = append(es, testimage.Dir(p, 0o755), testimage.File(p+"/f", p+"\n"))
	}
	return es
}

// chainEntries is a file and n hardlinks, each naming the one before.
func chainEntries(n int) []testimage.Entry {
	es := []testimage.Entry{testimage.File("l00000", "chained\n")}
	for i := 1; i <= n; i++ {
		es = append(es, testimage.Hardlink(fmt.Sprintf("l%05d", i), fmt.Sprintf("l%05d", i-1)))
	}
	return es
}

// chainLayers is a file, then n-1 layers each holding one hardlink to the
// file or link of the layer beneath.
func chainLayers(n int) []testimage.Layer {
	ls := []testimage.Layer{{Entries: []testimage.Entry{testimage.File("f0000", "chained\n")}}}
	for i := 1; i < n; i++ {
		ls = append(ls, testimage.Layer{Entries: []testimage.Entry{testimage.Hardlink(fmt.Sprintf("f%04d", i), fmt.Sprintf("f%04d", i-1))}})
	}
	return ls
}

// done reports whether dir was finished: it holds the stamp that marks a
// complete build. Anything else there is a leftover and goes.
func done(dir string) (bool, error) {
	if _, err := os.Stat(filepath.Join(dir, ".done")); err == nil {
		return true, nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return false, fmt.Errorf("remove unfinished %s: %w", dir, err)
	}
	return false, nil
}

func markDone(dir string) error {
	return os.WriteFile(filepath.Join(dir, ".done"), nil, 0o644)
}

func (b *bench) writeImage(img *image, layers []testimage.Layer) error {
	dir := filepath.Join(b.cache, "images", img.name)
	img.layout = filepath.Join(dir, "oci")
	ok, err := done(dir)
	if err != nil {
		return err
	}
	if !ok {
		start := time.Now()
		if _, err := testimage.WriteLayout(img.layout, testimage.Image{Name: img.name, Layers: layers}); err != nil {
			return fmt.Errorf("write image %s: %w", img.name, err)
		}
		if err := markDone(dir); err != nil {
			return err
		}
		logrus.WithFields(logrus.Fields{"image": img.name, "took": time.Since(start).Round(time.Second)}).Info("image written")
	}
	blobs, err := layerBlobs(img.layout, img.name)
	img.blobs = blobs
	return err
}

// layerBlobs lists the layer blobs of image ref in an OCI layout.
func layerBlobs(layout, ref string) ([]string, error) {
	idx, err := testimage.ReadIndex(layout)
	if err != nil {
		return nil, err
	}
	for _, d := range idx.Manifests {
		if d.Annotations[ocispec.AnnotationRefName] != ref {
			continue
		}
		m, _, err := testimage.ReadImage(layout, d)
		if err != nil {
			return nil, err
		}
		var out []string
		for _, l := range m.Layers {
			out = append(out, testimage.BlobPath(layout, l.Digest))
		}
		return out, nil
	}
	return nil, fmt.Errorf("layout %s has no image %s", layout, ref)
}

// unpack unpacks each layer blob of img with the oracle, once per blob:
// images sharing a layer share its unpacked directory.
func (b *bench) unpack(img *image) error {
	img.unpacked = nil
	for _, blob := range img.blobs {
		dir := filepath.Join(b.cache, "unpacked-"+corpusVersion, filepath.Base(blob))
		ok, err := done(dir)
		if err != nil {
			return err
		}
		layer := filepath.Join(dir, "layer")
		if !ok {
			start := time.Now()
			if err := oracle.UnpackLayer(blob, layer, img.unpacked); err != nil {
				return fmt.Errorf("image %s: %w", img.name, err)
			}
			if err := markDone(dir); err != nil {
				return err
			}
			logrus.WithFields(logrus.Fields{"image": img.name, "layer": filepath.Base(blob)[:12], "took": time.Since(start).Round(time.Second)}).Info("layer unpacked")
		}
		img.unpacked = append(img.unpacked, layer)
	}
	return nil
}

// sharedImages writes four images into one layout, all on the Debian
// image's lowest layer: the Debian image's three stacks, and the base
// with a small layer of its own. It returns the layout as the first
// image and then the three images that are not the Debian image itself.
func (b *bench) sharedImages(deb *image) ([]*image, error) {
	dir := filepath.Join(b.cache, "images", "shared-"+corpusVersion)
	layout := filepath.Join(dir, "oci")
	ok, err := done(dir)
	if err != nil {
		return nil, err
	}
	if !ok {
		if err := writeSharedLayout(deb.layout, layout); err != nil {
			return nil, fmt.Errorf("write shared-base images: %w", err)
		}
		if err := markDone(dir); err != nil {
			return nil, err
		}
	}
	out := []*image{{name: "shared", layout: layout}}
	for _, name := range []string{"base", "base-2", "base-top"} {
		blobs, err := layerBlobs(layout, name)
		if err != nil {
			return nil, err
		}
		out = append(out, &image{name: name, layout: layout, blobs: blobs})
	}
	return out, nil
}

// writeSharedLayout copies the Debian layout (hardlinking its blobs) and
// adds three images: its lowest layer alone, its two lowest layers, and
// its lowest layer under a small layer written here.
func writeSharedLayout(src, dst string) error {
	blobDir := filepath.Join(dst, ocispec.ImageBlobsDir, digest.SHA256.String())
	if err := os.MkdirAll(blobDir, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(src, ocispec.ImageBlobsDir, digest.SHA256.String()))
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.Link(filepath.Join(src, ocispec.ImageBlobsDir, digest.SHA256.String(), e.Name()), filepath.Join(blobDir, e.Name())); err != nil {
			return err
		}
	}
	for _, f := range []string{ocispec.ImageLayoutFile, ocispec.ImageIndexFile} {
		data, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, f), data, 0o644); err != nil {
			return err
		}
	}
	idx, err := testimage.ReadIndex(src)
	if err != nil {
		return err
	}
	if len(idx.Manifests) != 1 {
		return fmt.Errorf("layout %s: want one image, has %d", src, len(idx.Manifests))
	}
	m, cfg, err := testimage.ReadImage(src, idx.Manifests[0])
	if err != nil {
		return err
	}
	top, topDiff, err := writeSmallLayer(dst)
	if err != nil {
		return err
	}
	stacks := []struct {
		name    string
		layers  []ocispec.Descriptor
		diffIDs []digest.Digest
	}{
		{"base", m.Layers[:1], cfg.RootFS.DiffIDs[:1]},
		{"base-2", m.Layers[:2], cfg.RootFS.DiffIDs[:2]},
		{"base-top", []ocispec.Descriptor{m.Layers[0], top}, []digest.Digest{cfg.RootFS.DiffIDs[0], topDiff}},
	}
	for _, s := range stacks {
		c := cfg
		c.RootFS.DiffIDs = s.diffIDs
		c.History = nil
		cdesc, err := writeJSONBlob(dst, ocispec.MediaTypeImageConfig, c)
		if err != nil {
			return err
		}
		mm := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cdesc, Layers: s.layers}
		mdesc, err := writeJSONBlob(dst, ocispec.MediaTypeImageManifest, mm)
		if err != nil {
			return err
		}
		mdesc.Annotations = map[string]string{ocispec.AnnotationRefName: s.name}
		idx.Manifests = append(idx.Manifests, mdesc)
	}
	data, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dst, ocispec.ImageIndexFile), data, 0o644)
}

// writeSmallLayer writes a gzip layer of a few files, as an application
// layer on a shared base would be.
func writeSmallLayer(layout string) (ocispec.Descriptor, digest.Digest, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	entries := []testimage.Entry{testimage.Dir("app", 0o755)}
	for i := 0; i < 50; i++ {
		entries = append(entries, testimage.File(fmt.Sprintf("app/file-%02d", i), strings.Repeat(fmt.Sprintf("app file %d\n", i), 100)))
	}
	for _, e := range entries {
		if err := e.AddTo(tw); err != nil {
			return ocispec.Descriptor{}, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return ocispec.Descriptor{}, "", err
	}
	diffID := digest.FromBytes(raw.Bytes())
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return ocispec.Descriptor{}, "", err
	}
	if err := zw.Close(); err != nil {
		return ocispec.Descriptor{}, "", err
	}
	desc, err := writeBlob(layout, ocispec.MediaTypeImageLayerGzip, gz.Bytes())
	return desc, diffID, err
}

func writeJSONBlob(layout, mediaType string, v any) (ocispec.Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return writeBlob(layout, mediaType, data)
}

func writeBlob(layout, mediaType string, data []byte) (ocispec.Descriptor, error) {
	d := digest.FromBytes(data)
	if err := os.WriteFile(testimage.BlobPath(layout, d), data, 0o644); err != nil {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}, nil
}

// stores imports the corpus into the stores the cases mount, keyed by the
// layerfs binary so that a rebuilt binary never serves an older import.
func (b *bench) stores(c *corpus) error {
	key, err := fileHash(b.bin)
	if err != nil {
		return err
	}
	base := filepath.Join(b.cache, "stores", storesVersion+"-"+c.synth.name)
	if err := removeOthers(base, key); err != nil {
		return err
	}
	dir := filepath.Join(base, key)
	c.store = filepath.Join(dir, "main")
	c.nobodyStore = filepath.Join(dir, "nobody")
	c.sharedStore = filepath.Join(dir, "shared")
	ok, err := done(dir)
	if err != nil || ok {
		return err
	}
	// The unprivileged server must reach its store.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, d := range []string{filepath.Dir(base), base, dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	start := time.Now()
	for _, img := range []*image{c.debian, c.synth, c.edge, c.bigDir, c.deep} {
		if _, err := b.layerfs(c.store, "import", img.layout); err != nil {
			return err
		}
	}
	if _, err := b.layerfs(c.nobodyStore, "import", c.debian.layout); err != nil {
		return err
	}
	if err := chownTree(c.nobodyStore, nobody, nobody); err != nil {
		return err
	}
	if _, err := b.layerfs(c.sharedStore, "import", c.shared[0].layout); err != nil {
		return err
	}
	logrus.WithField("took", time.Since(start).Round(time.Second)).Info("stores imported")
	return markDone(dir)
}

// removeOthers removes every entry of dir but keep: stores of older
// binaries.
func removeOthers(dir, keep string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() != keep {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("remove old store: %w", err)
			}
		}
	}
	return nil
}

func fileHash(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func chownTree(root string, uid, gid int) error {
	return filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// diskUsage is what du -s reports for the dirs together: allocated
// blocks, each inode counted once.
func diskUsage(dirs ...string) (int64, error) {
	seen := map[[2]uint64]bool{}
	var total int64
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return fmt.Errorf("disk usage: %w", err)
			}
			key := [2]uint64{st.Dev, st.Ino}
			if !seen[key] {
				seen[key] = true
				total += st.Blocks * 512
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return total, nil
}
