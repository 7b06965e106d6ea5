package integration

import (
	"bytes"
	"context"
	"errors"
	iofs "io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/layerfs/layerfs/source/archive"
	"github.com/layerfs/layerfs/store"
	"github.com/layerfs/layerfs/view"
)

// TestIOFSMatchesOverlayfs reads the merged view of every rule case and
// the sample image through view.NewFS, as a Go program embedding
// layerfs does, and the same layers through os.DirFS over kernel
// overlayfs, and asks both the same io/fs questions: what fs.WalkDir
// finds and in what order, each entry's DirEntry type, Lstat's name,
// mode, size and mtime, ReadLink, ReadFile, Stat through symlinks, and
// what fails, and how (a path through a file, a missing name, ReadDir of
// a file). The mount tests compare every attribute with overlayfs; this
// is the io/fs form of the same answers.
//
// os.DirFS follows a symlink to an absolute target, or one climbing out,
// on the host; the view resolves it in the view, as a container does.
// Stat and ReadFile through symlinks are compared with os.Root's FS,
// which stays beneath the mount and refuses such a symlink, and where it
// refuses, not at all.
func TestIOFSMatchesOverlayfs(t *testing.T) {
	requireRoot(t)
	images := []layoutImage{sampleImage(t)}
	for _, c := range extractableRuleCases() {
		// os.DirFS takes UTF-8 paths only, as io/fs asks; the view
		// takes any Linux name (see view.ValidPath).
		if c.Name != "names-not-utf8" {
			images = append(images, ruleImage(t, c))
		}
	}
	for _, img := range images {
		t.Run(img.ref, func(t *testing.T) {
			mnt := overlayMount(t, unpackLayers(t, img.blobs))
			want := os.DirFS(mnt).(iofs.ReadLinkFS)
			root, err := os.OpenRoot(mnt)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			got := openImageFS(t, img)
			compareIOFS(t, want, root.FS(), got)
		})
	}
}

// openImageFS imports img into a new store and opens its merged view as
// an io/fs file system, through the exported API only.
func openImageFS(t *testing.T, img layoutImage) *view.FS {
	t.Helper()
	s, err := store.OpenForWriting(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := archive.Import(context.Background(), s, img.layout, archive.Options{Ref: img.ref}); err != nil {
		t.Fatal(err)
	}
	target, err := s.Resolve([]string{img.ref})
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.OpenView(target.Digests(), view.Merged)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return view.NewFS(v, view.ByName(s.OpenObject))
}

// walked is one entry fs.WalkDir found.
type walked struct {
	path string
	typ  iofs.FileMode
}

func walkIOFS(t *testing.T, fsys iofs.FS) []walked {
	t.Helper()
	var out []walked
	err := iofs.WalkDir(fsys, ".", func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		out = append(out, walked{p, d.Type()})
		return nil
	})
	if err != nil {
		t.Fatalf("WalkDir: %v", err)
	}
	return out
}

func compareIOFS(t *testing.T, want iofs.ReadLinkFS, wantRoot iofs.FS, got *view.FS) {
	wantWalk, gotWalk := walkIOFS(t, want), walkIOFS(t, got)
	if !slices.Equal(wantWalk, gotWalk) {
		t.Fatalf("WalkDir finds, in order:\n%v\nwant, as over overlayfs:\n%v", gotWalk, wantWalk)
	}
	for _, w := range wantWalk {
		p := w.path
		if p != "." {
			wi, werr := want.Lstat(p)
			gi, gerr := got.Lstat(p)
			compareInfo(t, "Lstat", p, wi, werr, gi, gerr)
		}
		switch {
		case w.typ&iofs.ModeSymlink != 0:
			wl, werr := want.ReadLink(p)
			gl, gerr := got.ReadLink(p)
			if wl != gl || (werr == nil) != (gerr == nil) {
				t.Errorf("ReadLink %s: %q, %v; want %q, %v", p, gl, gerr, wl, werr)
			}
			compareFollowed(t, wantRoot, got, p)
		case w.typ.IsRegular():
			wd, werr := iofs.ReadFile(want, p)
			gd, gerr := iofs.ReadFile(got, p)
			if werr != nil || gerr != nil || !bytes.Equal(wd, gd) {
				t.Errorf("ReadFile %s: %d bytes, %v; want %d bytes, %v", p, len(gd), gerr, len(wd), werr)
			}
		}
		if w.typ.IsDir() {
			compareErrs(t, "Open", path.Join(p, "no-such-name"), fsOpen(want), fsOpen(got))
			compareNotLink(t, want, got, p)
			continue
		}
		// A name beneath a non-directory, and listing one.
		compareErrs(t, "Open", path.Join(p, "x"), fsOpen(want), fsOpen(got))
		compareErrs(t, "Stat", path.Join(p, "x"), fsStat(want), fsStat(got))
		if w.typ&iofs.ModeSymlink == 0 {
			compareErrs(t, "ReadDir", p, fsReadDir(want), fsReadDir(got))
			compareNotLink(t, want, got, p)
		}
	}
	for _, bad := range []string{"../x", "/etc", "a//b", "a/", "./a", ""} {
		compareErrs(t, "Open", bad, fsOpen(want), fsOpen(got))
	}
}

// compareInfo compares what call gave for p, want's (w, werr) and got's
// (g, gerr): name, mode, mtime, and the size of what is not a directory
// (overlayfs gives a directory the size its upper filesystem does).
func compareInfo(t *testing.T, call, p string, w iofs.FileInfo, werr error, g iofs.FileInfo, gerr error) {
	t.Helper()
	if werr != nil || gerr != nil {
		t.Errorf("%s %s: %v; want %v", call, p, gerr, werr)
		return
	}
	same := g.Name() == w.Name() && g.Mode() == w.Mode() && g.ModTime().Equal(w.ModTime()) && g.IsDir() == w.IsDir()
	if !w.IsDir() && g.Size() != w.Size() {
		same = false
	}
	if !same {
		t.Errorf("%s %s: %s %v %d %s; want %s %v %d %s", call, p,
			g.Name(), g.Mode(), g.Size(), g.ModTime().UTC(), w.Name(), w.Mode(), w.Size(), w.ModTime().UTC())
	}
}

// compareFollowed compares Stat and ReadFile of symlink p, followed,
// where os.Root can follow it beneath the mount.
func compareFollowed(t *testing.T, wantRoot iofs.FS, got *view.FS, p string) {
	t.Helper()
	w, werr := iofs.Stat(wantRoot, p)
	if werr != nil && strings.Contains(werr.Error(), "escapes") {
		return
	}
	g, gerr := got.Stat(p)
	if werr != nil || gerr != nil {
		compareErrs(t, "Stat", p, func(string) error { return werr }, func(string) error { return gerr })
		return
	}
	compareInfo(t, "Stat", p, w, werr, g, gerr)
	if w.Mode().IsRegular() {
		wd, werr := iofs.ReadFile(wantRoot, p)
		gd, gerr := iofs.ReadFile(got, p)
		if werr != nil || gerr != nil || !bytes.Equal(wd, gd) {
			t.Errorf("ReadFile %s, followed: %d bytes, %v; want %d bytes, %v", p, len(gd), gerr, len(wd), werr)
		}
	}
}

func fsOpen(fsys iofs.FS) func(string) error {
	return func(p string) error {
		f, err := fsys.Open(p)
		if err == nil {
			f.Close()
		}
		return err
	}
}

func fsStat(fsys iofs.FS) func(string) error {
	return func(p string) error { _, err := iofs.Stat(fsys, p); return err }
}

func fsReadDir(fsys iofs.FS) func(string) error {
	return func(p string) error { _, err := iofs.ReadDir(fsys, p); return err }
}

// compareNotLink checks that ReadLink of p, no symlink, fails as
// os.DirFS's does: a *fs.PathError of op readlink naming p, which is
// syscall.EINVAL, and fs.ErrInvalid too, as the view's answers have
// always been.
func compareNotLink(t *testing.T, want iofs.ReadLinkFS, got *view.FS, p string) {
	t.Helper()
	_, werr := want.ReadLink(p)
	_, gerr := got.ReadLink(p)
	var wpe, gpe *iofs.PathError
	if !errors.As(werr, &wpe) || !errors.Is(werr, syscall.EINVAL) {
		t.Fatalf("ReadLink %q over overlayfs: %v, want a *fs.PathError of EINVAL", p, werr)
	}
	if !errors.As(gerr, &gpe) || gpe.Op != wpe.Op || gpe.Path != p || !errors.Is(gerr, syscall.EINVAL) || !errors.Is(gerr, iofs.ErrInvalid) {
		t.Errorf("ReadLink %q: %#v; want a *fs.PathError of op %q naming it, both syscall.EINVAL and fs.ErrInvalid, as %v", p, gerr, wpe.Op, werr)
	}
}

// compareErrs checks that call fails for p in both file systems alike:
// a *fs.PathError naming p as given, and the same answer to errors.Is
// for each error an io/fs caller tells apart.
func compareErrs(t *testing.T, call, p string, want, got func(string) error) {
	t.Helper()
	werr, gerr := want(p), got(p)
	if (werr == nil) != (gerr == nil) {
		t.Errorf("%s %q: %v; want %v", call, p, gerr, werr)
		return
	}
	if werr == nil {
		return
	}
	var pe *iofs.PathError
	if !errors.As(gerr, &pe) || pe.Path != p {
		t.Errorf("%s %q: %#v, want a *fs.PathError naming %q", call, p, gerr, p)
	}
	for _, kind := range []error{iofs.ErrNotExist, iofs.ErrInvalid, iofs.ErrPermission, syscall.ENOTDIR, syscall.ELOOP} {
		if errors.Is(werr, kind) != errors.Is(gerr, kind) {
			t.Errorf("%s %q: %v (is %v: %t); want %v", call, p, gerr, kind, errors.Is(gerr, kind), werr)
		}
	}
}
