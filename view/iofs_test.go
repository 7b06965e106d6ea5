package view_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"unicode/utf8"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/internal/teststore"
	"github.com/layerfs/layerfs/store"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
	"github.com/layerfs/layerfs/viewops"
	"github.com/layerfs/layerfs/whiteout"
)

// TestFS checks the io/fs form of every kind of view of the sample image
// and of every rule case with testing/fstest, and that it shows the paths
// and attributes that viewops.Walk (which the mount tests compare with
// kernel overlayfs) finds.
func TestFS(t *testing.T) {
	images := append([]testimage.RuleCase{{Name: "sample", Layers: testimage.Sample().Layers}}, testimage.RuleCases()...)
	for _, c := range images {
		t.Run(c.Name, func(t *testing.T) {
			s, merged := teststore.OpenImage(t, c.Layers)
			checkFS(t, s, merged)
			for i := range merged.Layers {
				for _, kind := range []view.Kind{view.Single, view.Overlay} {
					// The merged view owns and closes the layers.
					v, err := stack.New(merged.Layers[i:i+1], kind)
					if err != nil {
						t.Fatal(err)
					}
					t.Run(kind.String(), func(t *testing.T) { checkFS(t, s, v) })
				}
			}
		})
	}
}

func checkFS(t *testing.T, s *store.Store, v *stack.View) {
	want := map[string]view.Attr{}
	err := viewops.Walk(v, "", func(p string, _ view.Node, a view.Attr) error {
		want[path.Join(".", p)] = a
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got := testFS(t, view.NewFS(v, view.ByName(s.OpenObject)))
	for p, a := range want {
		if !reflect.DeepEqual(got[p], a) {
			t.Errorf("%s: the FS shows %+v, Walk %+v", p, got[p], a)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: the FS shows it, Walk does not", p)
		}
	}
}

// TestOverlayFormat checks the overlay format of each layer of every rule
// case, through its io/fs form, against the single-layer view of the same
// layer: the same names but for the markers, each .wh.X shown as a 0/0
// character device X unless X is there too (rule O). Its xattrs are
// compared with kernel overlayfs by the mount tests.
func TestOverlayFormat(t *testing.T) {
	for _, c := range testimage.RuleCases() {
		t.Run(c.Name, func(t *testing.T) {
			s, merged := teststore.OpenImage(t, c.Layers)
			for i := range merged.Layers {
				single, err := stack.New(merged.Layers[i:i+1], view.Single)
				if err != nil {
					t.Fatal(err)
				}
				overlay, err := stack.New(merged.Layers[i:i+1], view.Overlay)
				if err != nil {
					t.Fatal(err)
				}
				checkOverlay(t, s, single, overlay)
			}
		})
	}
}

func checkOverlay(t *testing.T, s *store.Store, single, overlay *stack.View) {
	want := map[string]view.Attr{}
	var devices []string
	err := viewops.Walk(single, "", func(p string, _ view.Node, a view.Attr) error {
		dir, name := path.Split(p)
		if !whiteout.IsMarker(name) {
			want[path.Join(".", p)] = a
			return nil
		}
		if hidden, ok := whiteout.Hidden(name); ok {
			devices = append(devices, path.Join(".", dir, hidden))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	isDevice := map[string]bool{}
	for _, p := range devices {
		if _, real := want[p]; !real {
			want[p], isDevice[p] = view.Attr{Type: view.TypeChar, Nlink: 1}, true
		}
	}
	got := testFS(t, view.NewFS(overlay, view.ByName(s.OpenObject)))
	for p, g := range got {
		w, ok := want[p]
		if !ok {
			t.Errorf("%s: the overlay format shows it, the layer has no such name", p)
			continue
		}
		g.Ino, g.Xattrs, g.Source, w.Ino, w.Xattrs, w.Source = 0, nil, view.Ref{}, 0, nil, view.Ref{}
		if isDevice[p] {
			// A device's mtime is its marker's.
			g.Mtime, g.MtimeNs = 0, 0
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s: the overlay format shows %+v, want %+v", p, g, w)
		}
	}
	for p := range want {
		if _, ok := got[p]; !ok {
			t.Errorf("%s: the overlay format does not show it", p)
		}
	}
}

// testFS walks fsys with fs.WalkDir and checks it with fstest.TestFS,
// expecting every path the walk finds; it returns each path's Attr. Open
// follows symlinks, as os.DirFS does, so a dangling one fails it and
// with it fstest.TestFS: a view with one is walked only, and the
// dangling symlinks are read with ReadLink.
func testFS(t *testing.T, fsys *view.FS) map[string]view.Attr {
	t.Helper()
	got := map[string]view.Attr{}
	var paths []string
	dangling := false
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		a, ok := info.Sys().(*view.Attr)
		if !ok {
			t.Fatalf("%s: Sys() is %T", p, info.Sys())
		}
		got[p] = *a
		if p != "." {
			paths = append(paths, p)
		}
		if a.Type != view.TypeSymlink {
			return nil
		}
		if _, err := fs.Stat(fsys, p); errors.Is(err, fs.ErrNotExist) {
			dangling = true
			if target, err := fsys.ReadLink(p); err != nil || target != a.Link {
				t.Errorf("%s: ReadLink gives %q, %v; want %q", p, target, err, a.Link)
			}
		} else if err != nil {
			t.Errorf("%s: %v", p, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// fstest.TestFS opens each directory with fs.Sub, which takes UTF-8
	// paths only.
	if !dangling && !slices.ContainsFunc(paths, func(p string) bool { return !utf8.ValidString(p) }) {
		if err := fstest.TestFS(fsys, paths...); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

// TestHTTPServesEveryFile serves the sizes rule case, an empty file and
// a large one, through net/http's io/fs adapter, which seeks each file to
// learn its size: every regular file must come back whole.
func TestHTTPServesEveryFile(t *testing.T) {
	s, v := teststore.OpenImage(t, teststore.RuleCase(t, "sizes").Layers)
	fsys := view.NewFS(v, view.ByName(s.OpenObject))
	srv := httptest.NewServer(http.FileServer(http.FS(fsys)))
	defer srv.Close()
	for _, name := range []string{"empty", "large"} {
		want, err := fs.ReadFile(fsys, name)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get(srv.URL + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || !bytes.Equal(got, want) {
			t.Errorf("%s: %s, %d bytes; want 200 OK, %d bytes", name, resp.Status, len(got), len(want))
		}
	}
}

// TestClosedView: a view read after Close says so, where reading its
// unmapped indexes ended the process; it is not damage.
func TestClosedView(t *testing.T) {
	s, v := teststore.OpenImage(t, testimage.Sample().Layers)
	fsys := view.NewFS(v, view.ByName(s.OpenObject))
	v.Close()
	_, readErr := fs.ReadFile(fsys, "etc/hostname")
	_, listErr := fsys.ReadDir(".")
	for _, err := range []error{readErr, listErr} {
		if !errors.Is(err, fs.ErrClosed) || errors.Is(err, stack.ErrCorrupt) {
			t.Errorf("%v, want an error wrapping fs.ErrClosed, not damage", err)
		}
	}
}

// TestMissingObject: a file whose object is gone from the store is still
// in the view, as Stat says, so opening it is an I/O error, as the mount
// answers, and never fs.ErrNotExist, which a walker would skip as a file
// removed meanwhile.
func TestMissingObject(t *testing.T) {
	s, v := teststore.OpenImage(t, testimage.Sample().Layers)
	fsys := view.NewFS(v, view.ByName(s.OpenObject))
	info, err := fsys.Stat("etc/hostname")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(s.ObjectPath(info.Sys().(*view.Attr).Object)); err != nil {
		t.Fatal(err)
	}
	_, err = fs.ReadFile(fsys, "etc/hostname")
	if !errors.Is(err, syscall.EIO) || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile: %v, want EIO and not fs.ErrNotExist", err)
	}
}

// TestDamagedObject: an object cut short or grown in the store is
// refused when its file is opened, as the mount refuses it, rather than
// read as fewer or more bytes than Stat gives with no error. It is EIO
// and ErrDamagedObject, never fs.ErrNotExist.
func TestDamagedObject(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage func(object string, size int64) error
	}{
		{"short", func(o string, size int64) error { return os.Truncate(o, size-1) }},
		{"long", func(o string, size int64) error { return os.Truncate(o, size+1) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, v := teststore.OpenImage(t, testimage.Sample().Layers)
			fsys := view.NewFS(v, view.ByName(s.OpenObject))
			info, err := fsys.Stat("etc/os-release")
			if err != nil {
				t.Fatal(err)
			}
			if err := c.damage(s.ObjectPath(info.Sys().(*view.Attr).Object), info.Size()); err != nil {
				t.Fatal(err)
			}
			data, err := fs.ReadFile(fsys, "etc/os-release")
			if !errors.Is(err, view.ErrDamagedObject) || !errors.Is(err, syscall.EIO) || errors.Is(err, fs.ErrNotExist) {
				t.Errorf("ReadFile: %d bytes, %v; want EIO and ErrDamagedObject", len(data), err)
			}
			var pe *fs.PathError
			if !errors.As(err, &pe) || pe.Op != "open" || pe.Path != "etc/os-release" {
				t.Errorf("ReadFile: %#v, want a *fs.PathError of open etc/os-release", err)
			}
		})
	}
}

// TestStoreClosed: the store a view reads its files' contents through
// was closed, so opening one says so (fs.ErrClosed); the view itself
// still answers, and a file opened before reads on.
func TestStoreClosed(t *testing.T) {
	s, v := teststore.OpenImage(t, testimage.Sample().Layers)
	fsys := view.NewFS(v, view.ByName(s.OpenObject))
	open, err := fsys.Open("etc/hostname")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	_, err = fs.ReadFile(fsys, "etc/hostname")
	if !errors.Is(err, fs.ErrClosed) || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile after the store's Close: %v, want fs.ErrClosed", err)
	}
	if _, err := fsys.Stat("etc/hostname"); err != nil {
		t.Errorf("Stat after the store's Close: %v", err)
	}
	if data, err := io.ReadAll(open); err != nil || string(data) != "sample\n" {
		t.Errorf("a file opened before the store's Close reads %q, %v", data, err)
	}
}

// TestOpenFile: an open regular file reads, seeks and reads at offsets
// as an *os.File does, offers nothing that would change its object
// (which every image with those bytes shares), and names itself by its
// path in the view in errors, as os.DirFS's files do, not by the
// object's path in the store.
func TestOpenFile(t *testing.T) {
	s, v := teststore.OpenImage(t, testimage.Sample().Layers)
	fsys := view.NewFS(v, view.ByName(s.OpenObject))
	f, err := fsys.Open("etc/hostname")
	if err != nil {
		t.Fatal(err)
	}
	for what, ok := range map[string]bool{
		"io.Seeker":    is[io.Seeker](f),
		"io.ReaderAt":  is[io.ReaderAt](f),
		"no io.Writer": !is[io.Writer](f),
		"no Chmod":     !is[interface{ Chmod(fs.FileMode) error }](f),
		"no Chown":     !is[interface{ Chown(int, int) error }](f),
		"no Truncate":  !is[interface{ Truncate(int64) error }](f),
		"no ReadDir":   !is[fs.ReadDirFile](f),
	} {
		if !ok {
			t.Errorf("an open file: want %s", what)
		}
	}
	buf := make([]byte, 3)
	if n, err := f.(io.ReaderAt).ReadAt(buf, 2); n != 3 || err != nil || string(buf) != "mpl" {
		t.Errorf("ReadAt 2: %q, %v", buf[:n], err)
	}
	if off, err := f.(io.Seeker).Seek(-2, io.SeekEnd); off != 5 || err != nil {
		t.Errorf("Seek -2 from the end: %d, %v", off, err)
	}
	if data, err := io.ReadAll(f); string(data) != "e\n" || err != nil {
		t.Errorf("ReadAll after the seek: %q, %v", data, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = f.Read(buf)
	var pe *fs.PathError
	if !errors.Is(err, fs.ErrClosed) || !errors.As(err, &pe) || pe.Path != "etc/hostname" {
		t.Errorf("Read after Close: %v, want fs.ErrClosed naming etc/hostname", err)
	}
}

// TestClosedFiles: every call on a closed file, directory or empty file
// fails as on the same one opened from os.DirFS, with a *fs.PathError of
// the same Op naming it and wrapping fs.ErrClosed (which os's ReadDir
// after Close does not wrap, an os quirk not copied).
func TestClosedFiles(t *testing.T) {
	s, v := teststore.OpenImage(t, []testimage.Layer{{Entries: []testimage.Entry{
		testimage.Dir("d", 0o755), testimage.File("d/f", "content\n"), testimage.File("empty", ""),
	}}})
	fsys := view.NewFS(v, view.ByName(s.OpenObject))
	disk := t.TempDir()
	if err := os.Mkdir(disk+"/d", 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"d/f": "content\n", "empty": ""} {
		if err := os.WriteFile(disk+"/"+name, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Each call, and whether the file has it at all: a directory of the
	// FS neither seeks nor reads at offsets.
	calls := map[string]func(fs.File) (bool, error){
		"Read":  func(f fs.File) (bool, error) { _, err := f.Read(make([]byte, 1)); return true, err },
		"Stat":  func(f fs.File) (bool, error) { _, err := f.Stat(); return true, err },
		"Close": func(f fs.File) (bool, error) { return true, f.Close() },
		"ReadAt": func(f fs.File) (bool, error) {
			r, ok := f.(io.ReaderAt)
			if !ok {
				return false, nil
			}
			_, err := r.ReadAt(make([]byte, 1), 0)
			return true, err
		},
		"Seek": func(f fs.File) (bool, error) {
			s, ok := f.(io.Seeker)
			if !ok {
				return false, nil
			}
			_, err := s.Seek(0, io.SeekStart)
			return true, err
		},
		"ReadDir": func(f fs.File) (bool, error) {
			d, ok := f.(fs.ReadDirFile)
			if !ok {
				return false, nil
			}
			_, err := d.ReadDir(-1)
			return true, err
		},
	}
	closed := func(fsys fs.FS, name string) fs.File {
		f, err := fsys.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, name := range []string{".", "d", "d/f", "empty"} {
		for call, do := range calls {
			has, err := do(closed(fsys, name))
			if !has {
				continue
			}
			_, osErr := do(closed(os.DirFS(disk), name))
			var pe, osPE *fs.PathError
			if !errors.As(osErr, &osPE) {
				t.Fatalf("%s of closed %s from os.DirFS: %v, want a *fs.PathError", call, name, osErr)
			}
			if !errors.As(err, &pe) || pe.Op != osPE.Op || pe.Path != name || !errors.Is(err, fs.ErrClosed) {
				t.Errorf("%s of closed %s: %v; want a *fs.PathError of op %q naming it, wrapping fs.ErrClosed, as os.DirFS's %v", call, name, err, osPE.Op, osErr)
			}
		}
	}
}

func is[T any](v any) bool {
	_, ok := v.(T)
	return ok
}

// TestInvalidPaths: a name io/fs does not allow ("../x", "/x", "a//b",
// "x/", "") is fs.ErrInvalid from every call, as os.DirFS answers, and a
// missing one fs.ErrNotExist, each a *fs.PathError naming the call and
// the name as given.
func TestInvalidPaths(t *testing.T) {
	s, v := teststore.OpenImage(t, testimage.Sample().Layers)
	fsys := view.NewFS(v, view.ByName(s.OpenObject))
	calls := map[string]func(string) error{
		"open":     func(p string) error { _, err := fsys.Open(p); return err },
		"stat":     func(p string) error { _, err := fsys.Stat(p); return err },
		"lstat":    func(p string) error { _, err := fsys.Lstat(p); return err },
		"readdir":  func(p string) error { _, err := fsys.ReadDir(p); return err },
		"readlink": func(p string) error { _, err := fsys.ReadLink(p); return err },
	}
	for _, c := range []struct {
		name string
		want error
	}{
		{"../etc", fs.ErrInvalid},
		{"/etc", fs.ErrInvalid},
		{"etc//hostname", fs.ErrInvalid},
		{"etc/", fs.ErrInvalid},
		{"./etc", fs.ErrInvalid},
		{"", fs.ErrInvalid},
		{"etc/missing", fs.ErrNotExist},
		{"missing/x", fs.ErrNotExist},
	} {
		for op, call := range calls {
			err := call(c.name)
			var pe *fs.PathError
			if !errors.Is(err, c.want) || !errors.As(err, &pe) || pe.Op != op || pe.Path != c.name {
				t.Errorf("%s %q: %#v, want a *fs.PathError of %s %q wrapping %v", op, c.name, err, op, c.name, c.want)
			}
		}
	}
}

// TestValidPath: ValidPath agrees with fs.ValidPath but for names that are
// not UTF-8, which it takes.
func TestValidPath(t *testing.T) {
	for _, p := range []string{".", "a", "a/b", "", "/", "/a", "a/", "a//b", "./a", "a/.", "..", "a/../b", "caf\xe9", "a/\xff\xfe"} {
		want := fs.ValidPath(p) || (!utf8.ValidString(p) && fs.ValidPath(strings.ToValidUTF8(p, "x")))
		if got := view.ValidPath(p); got != want {
			t.Errorf("ValidPath(%q) = %v, want %v", p, got, want)
		}
	}
}
