package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/layerfs/layerfs/store/index"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Freed is what gc removed.
type Freed struct {
	// Metas counts the files of meta/: images of mount --kernel and
	// their records.
	Blobs, Layers, Objects, Metas, Temps int
	Bytes                                int64
}

// referenced collects every blob and layer the images reference.
func (s *Store) referenced() (blobs map[digest.Digest]bool, layers map[digest.Digest]bool, err error) {
	images, err := s.Images()
	if err != nil {
		return nil, nil, err
	}
	blobs, layers = map[digest.Digest]bool{}, map[digest.Digest]bool{}
	for _, img := range images {
		blobs[img.Manifest.Digest] = true
		manifests, indexes, err := s.imageParts(img)
		if err != nil {
			return nil, nil, fmt.Errorf("image %s: %w", imageLabel(img), err)
		}
		for _, d := range indexes {
			blobs[d] = true
		}
		for _, desc := range manifests {
			m, _, err := s.ImageLayers(desc.Digest)
			if err != nil {
				return nil, nil, fmt.Errorf("image %s: %w", imageLabel(img), err)
			}
			blobs[desc.Digest], blobs[m.Config.Digest] = true, true
			for _, l := range m.Layers {
				blobs[l.Digest], layers[l.Digest] = true, true
			}
		}
	}
	bare, err := s.bareLayers()
	if err != nil {
		return nil, nil, err
	}
	for _, l := range bare {
		blobs[l.Digest], layers[l.Digest] = true, true
	}
	return blobs, layers, nil
}

// GC removes every blob, layer index and object that neither an image
// nor a live view's lease references, the meta images of mount --kernel
// and their records that unusedMeta lists (Freed.Metas), every temp
// file, and the leases of views that are gone. It waits for writers to
// finish and keeps them out while it runs, so it never removes what an
// import is writing. With dryRun it removes nothing, and returns what it
// would free.
func (s *Store) GC(dryRun bool) (Freed, error) {
	var f Freed
	if s.dir == nil {
		return f, nil // no store here: nothing to free
	}
	unlock, err := s.lock(context.Background(), gcLock, unix.LOCK_EX, "the commands writing to the store at "+s.root+" to finish")
	if err != nil {
		return f, err
	}
	defer unlock()
	blobs, layers, err := s.referenced()
	if err != nil {
		return f, fmt.Errorf("gc: %w (nothing removed)", err)
	}
	leases, stale, err := s.Leases()
	if err != nil {
		return f, fmt.Errorf("gc: %w (nothing removed)", err)
	}
	for _, l := range leases {
		for _, d := range l.Blobs {
			blobs[d] = true
		}
		for _, d := range l.Layers {
			layers[d] = true
		}
	}
	// What cannot be read or removed is reported, and gc goes on with the
	// rest: a store is never left half-collected for one bad entry.
	var failed []error
	remove := func(p string, count *int) {
		size := diskUsage(p)
		if !dryRun {
			if err := s.removeBeneath(s.rel(p)); err != nil {
				failed = append(failed, err)
				return
			}
		}
		*count++
		f.Bytes += size
	}
	readDir := func(p string) []os.DirEntry {
		es, err := os.ReadDir(p)
		if err != nil {
			failed = append(failed, fmt.Errorf("read %s: %w", s.rel(p), err))
		}
		return es
	}
	if !dryRun {
		for _, p := range stale {
			if err := s.removeBeneath(s.rel(p)); err != nil {
				failed = append(failed, err)
			}
		}
	}
	for _, e := range readDir(s.path(tmpDir)) {
		remove(filepath.Join(s.path(tmpDir), e.Name()), &f.Temps)
	}
	for _, e := range readDir(s.path(blobsDir)) {
		if !blobs[digest.NewDigestFromEncoded(digest.SHA256, e.Name())] {
			remove(filepath.Join(s.path(blobsDir), e.Name()), &f.Blobs)
		}
	}
	for _, e := range readDir(s.path(layersDir)) {
		// A layer's lock file goes with it, but counts for nothing.
		hex, isLock := strings.CutSuffix(e.Name(), ".lock")
		if layers[digest.NewDigestFromEncoded(digest.SHA256, hex)] {
			continue
		}
		counter := &f.Layers
		if isLock {
			counter = new(int)
		}
		remove(filepath.Join(s.path(layersDir), e.Name()), counter)
	}
	unused, err := s.unusedMeta(layers, leases)
	if err != nil {
		failed = append(failed, err)
	}
	for _, p := range unused {
		remove(p, &f.Metas)
	}
	live := map[digest.Digest]bool{}
	for d := range layers {
		if err := s.objectsOf(d, func(o digest.Digest) { live[o] = true }); err != nil && !errors.Is(err, os.ErrNotExist) {
			return f, fmt.Errorf("gc: layer %s: %w (objects kept)", d, err)
		}
	}
	for _, fan := range readDir(s.path(objectsDir)) {
		dir := filepath.Join(s.path(objectsDir), fan.Name())
		for _, o := range readDir(dir) {
			if !live[digest.NewDigestFromEncoded(digest.SHA256, o.Name())] {
				remove(filepath.Join(dir, o.Name()), &f.Objects)
			}
		}
	}
	if len(failed) > 0 {
		return f, fmt.Errorf("gc: %w", errors.Join(failed...))
	}
	return f, nil
}

// objectsOf calls fn for every object layer d's index names.
func (s *Store) objectsOf(d digest.Digest, fn func(digest.Digest)) error {
	r, err := s.openIndex(d, true)
	if err != nil {
		if os.IsNotExist(err) {
			return err
		}
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	defer r.Close()
	for i := uint32(0); i < uint32(r.Len()); i++ {
		if t, _ := r.TypeOf(i); t != index.TypeReg {
			continue
		}
		e, err := r.Entry(i)
		if err != nil {
			return err
		}
		if e.Object != "" {
			fn(e.Object)
		}
	}
	return nil
}

// diskUsage counts the bytes of the files under p, but for a layer's
// links, which are names of objects counted as objects.
func diskUsage(p string) int64 {
	var n int64
	filepath.Walk(p, func(name string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() && name == filepath.Join(p, linksDir) {
			return filepath.SkipDir
		}
		if err == nil && !info.IsDir() {
			n += info.Size()
		}
		return nil
	})
	return n
}

// Problem is one thing verify found wrong.
type Problem struct {
	What string // "blob", "object", "layer", "meta image"
	ID   string
	Err  error
}

func (p Problem) String() string { return fmt.Sprintf("%s %s: %v", p.What, p.ID, p.Err) }

// Verified counts what a Verify checked.
type Verified struct {
	Blobs, Objects, Indexes int
	// Metas counts the cached images of mount --kernel checked.
	Metas int
}

// Verify re-hashes the blobs and objects of targets' layers (of every
// image when targets is nil) and checks their indexes, their links
// directories and the cached images of mount --kernel of those views
// (every one when targets is nil); it returns what it checked and every
// problem found. Links are the one thing it repairs (repairLinks): they
// are names, made again from the objects, and a kernel mount reads
// through them.
func (s *Store) Verify(targets []Target) (Verified, []Problem, error) {
	var problems []Problem
	add := func(what, id string, err error) { problems = append(problems, Problem{what, id, err}) }
	blobs := map[digest.Digest]bool{}
	layers := map[digest.Digest]bool{}
	if targets == nil {
		var err error
		blobs, layers, err = s.referenced()
		if err != nil {
			return Verified{}, nil, err
		}
	} else {
		for _, t := range targets {
			if t.Manifest.Digest != "" {
				blobs[t.Manifest.Digest] = true
			}
			for _, l := range t.Layers {
				blobs[l.Digest], layers[l.Digest] = true, true
			}
		}
	}
	for d := range blobs {
		if err := s.hashFile(blobRel(d), d); err != nil {
			add("blob", d.String(), err)
		}
	}
	objects := map[digest.Digest]bool{}
	indexes := 0
	for d := range layers {
		if !s.Extracted(d) {
			continue
		}
		indexes++
		if err := s.objectsOf(d, func(o digest.Digest) { objects[o] = true }); err != nil {
			add("layer", d.String(), err)
		}
		broken, problems, err := s.checkLinks(d)
		if problems == nil && err == nil {
			continue
		}
		add("layer", d.String(), fmt.Errorf("links: %w", s.repairLinks(d, broken, problems, err)))
	}
	for o := range objects {
		if err := s.hashFile(objectRel(o), o); err != nil {
			add("object", o.String(), err)
		}
	}
	var stacks [][]digest.Digest
	for _, t := range targets {
		stacks = append(stacks, t.Digests())
	}
	metas, metaProblems, err := s.verifyMeta(stacks)
	if err != nil {
		return Verified{}, nil, err
	}
	problems = append(problems, metaProblems...)
	return Verified{Blobs: len(blobs), Objects: len(objects), Indexes: indexes, Metas: metas}, problems, nil
}

func (s *Store) hashFile(rel string, want digest.Digest) error {
	f, err := s.openRegular(rel)
	if err != nil {
		return err
	}
	defer f.Close()
	v := want.Verifier()
	if _, err := io.Copy(v, f); err != nil {
		return err
	}
	if !v.Verified() {
		return ErrMismatch
	}
	return nil
}

// repairLinks makes layer d's links right again, where checkLinks found
// broken ones (problems) or could not read the layer's index (indexErr):
// in place where the index is readable, so a kernel mount over the layer
// reads the right bytes again; else the directory goes, and the next
// kernel mount makes it anew. It returns what was wrong and what was
// done. It holds the writer's lock, as linkLayer does, so that gc does
// not remove the layer beneath it; a store the user cannot write is left
// as it is, the problem reported.
func (s *Store) repairLinks(d digest.Digest, broken []digest.Digest, problems, indexErr error) error {
	release, err := s.Writing(context.Background())
	if err != nil {
		return errors.Join(problems, indexErr, fmt.Errorf("not repaired: %w", err))
	}
	defer release()
	if !s.Extracted(d) {
		return fmt.Errorf("%w; the layer was removed meanwhile", errors.Join(problems, indexErr))
	}
	err = indexErr
	if err == nil {
		if err = s.relink(d, broken); err == nil {
			return fmt.Errorf("%w; linked again", problems)
		}
	}
	err = errors.Join(problems, err)
	if rerr := s.removeBeneath(s.rel(filepath.Join(s.layerDir(d), linksDir))); rerr != nil {
		return errors.Join(err, rerr)
	}
	return fmt.Errorf("%w; removed, the next mount --kernel over the layer links its objects again", err)
}
