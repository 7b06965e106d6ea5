package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// A layer's links directory, layers/sha256/<hex>/links, holds a hardlink
// to each of its objects, named by the object's hex digest: the same
// files as objects/, in one small directory per layer. A kernel mount
// reads through them (docs/store.md): a cold lookup of a view's objects
// then reads a few blocks of its layers' directories instead of a block
// of objects/ for nearly every file, since content names scatter a
// layer's objects over every directory there.
const linksDir = "links"

// installLinks makes staged, a directory of hardlinks to layer d's
// objects, its links directory, replacing one an extraction cut short
// left behind.
func (s *Store) installLinks(d digest.Digest, staged string) error {
	final := filepath.Join(s.layerDir(d), linksDir)
	err := os.Rename(staged, final)
	if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, fs.ErrExist) {
		if err = s.removeBeneath(s.rel(final)); err == nil {
			err = os.Rename(staged, final)
		}
	}
	if err != nil {
		return fmt.Errorf("layer %s: links of its objects: %w", d, err)
	}
	return nil
}

// EnsureLinks gives each of layers that was extracted before links
// existed its links directory. Another process doing the same at once is
// harmless: the first complete directory stays.
func (s *Store) EnsureLinks(ctx context.Context, layers []digest.Digest) error {
	for _, d := range layers {
		if _, err := os.Lstat(filepath.Join(s.layerDir(d), linksDir)); err == nil {
			continue
		}
		if err := s.linkLayer(ctx, d); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) linkLayer(ctx context.Context, d digest.Digest) error {
	release, err := s.Writing(ctx)
	if err != nil {
		return fmt.Errorf("layer %s: links of its objects: %w", d, err)
	}
	defer release()
	staged, err := os.MkdirTemp(s.path(tmpDir), "links-")
	if err != nil {
		return fmt.Errorf("layer %s: links of its objects: %w", d, err)
	}
	defer os.RemoveAll(staged)
	var linkErr error
	err = s.objectsOf(d, func(o digest.Digest) {
		if linkErr != nil {
			return
		}
		err := os.Link(s.ObjectPath(o), filepath.Join(staged, o.Encoded()))
		if err != nil && !errors.Is(err, fs.ErrExist) {
			linkErr = fmt.Errorf("layer %s: link object %s: %w", d, o, err)
		}
	})
	if err = errors.Join(err, linkErr); err != nil {
		return err
	}
	if err := syncPath(staged); err != nil {
		return err
	}
	err = os.Rename(staged, filepath.Join(s.layerDir(d), linksDir))
	if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("layer %s: links of its objects: %w", d, err)
	}
	return syncPath(s.layerDir(d))
}

// LinkPath is the redirect of object o in a kernel mount: its name in
// each links directory OpenLinks opens, which the mount takes as its
// data-only layers. overlayfs looks the path up in them in turn; any
// layer's link to o holds o's bytes. A redirect this short, instead of
// one naming the layer too, keeps each file's inode in the metadata
// image about 70 bytes smaller, and a cold walk reads that image whole.
func LinkPath(o digest.Digest) string {
	return "/" + o.Encoded()
}

// RootOfLinks is the root of the store whose links directories dirs are
// (a kernel mount's data-only layers), or "" when they are not all one
// store's.
func RootOfLinks(dirs []string) string {
	root := ""
	for _, dir := range dirs {
		dir = filepath.Clean(dir)
		layer := filepath.Dir(dir)
		d := digest.NewDigestFromEncoded(digest.SHA256, filepath.Base(layer))
		r, ok := strings.CutSuffix(filepath.Dir(layer), "/"+layersDir)
		if filepath.Base(dir) != linksDir || d.Validate() != nil || !ok || (root != "" && r != root) {
			return ""
		}
		root = r
	}
	return root
}

// OpenLinks opens the links directory of each of layers, once each, in
// the order given: the data-only layers of a kernel mount, where the
// meta image's redirects (LinkPath) are looked up.
func (s *Store) OpenLinks(layers []digest.Digest) ([]*os.File, error) {
	var dirs []*os.File
	seen := map[digest.Digest]bool{}
	for _, d := range layers {
		if seen[d] {
			continue
		}
		seen[d] = true
		f, err := s.openBeneath(filepath.Join(layersDir, d.Encoded(), linksDir), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			for _, f := range dirs {
				f.Close()
			}
			return nil, fmt.Errorf("layer %s: links of its objects: %w", d, err)
		}
		dirs = append(dirs, f)
	}
	return dirs, nil
}

// checkLinks finds what is wrong with layer d's links directory, if it
// has one: an object of the layer with no link, or a link that is not
// the store's object and does not hold the object's bytes either. Those
// objects are broken, each with its problem in problems; err is a failure
// to read the layer's index.
func (s *Store) checkLinks(d digest.Digest) (broken []digest.Digest, problems, err error) {
	dir := filepath.Join(s.layerDir(d), linksDir)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	var found []error
	err = s.objectsOf(d, func(o digest.Digest) {
		link := filepath.Join(dir, o.Encoded())
		li, err := os.Lstat(link)
		if err != nil {
			broken, found = append(broken, o), append(found, fmt.Errorf("object %s: %w", o, err))
			return
		}
		if oi, err := os.Lstat(s.ObjectPath(o)); err == nil && os.SameFile(li, oi) {
			return
		}
		if err := s.hashFile(s.rel(link), o); err != nil {
			broken, found = append(broken, o), append(found, fmt.Errorf("link of object %s: %w", o, err))
		}
	})
	return broken, errors.Join(found...), err
}

// relink links each of layer d's broken objects again, in place: a new
// link replaces the name by a rename, so that a kernel mount, which
// holds the links directory itself as a data-only layer, reads each
// object's bytes from its next open of the file on.
func (s *Store) relink(d digest.Digest, broken []digest.Digest) error {
	links, err := s.openBeneath(filepath.Join(layersDir, d.Encoded(), linksDir), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer links.Close()
	for _, o := range broken {
		if err := s.relinkOne(int(links.Fd()), o); err != nil {
			return fmt.Errorf("link object %s again: %w", o, err)
		}
	}
	return links.Sync()
}

func (s *Store) relinkOne(links int, o digest.Digest) error {
	rel := objectRel(o)
	dir, err := s.openBeneath(filepath.Dir(rel), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer dir.Close()
	tmp := "." + o.Encoded() + ".relink"
	if err := removeAt(links, tmp); err != nil {
		return err
	}
	if err := unix.Linkat(int(dir.Fd()), filepath.Base(rel), links, tmp, 0); err != nil {
		return err
	}
	if err := unix.Renameat(links, tmp, links, o.Encoded()); err != nil {
		unix.Unlinkat(links, tmp, 0)
		return err
	}
	return nil
}
