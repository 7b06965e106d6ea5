package oracle

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

// requireIntegration ends, through testimage.Unavailable, a test that
// needs root, GNU tar and overlayfs on a machine without them.
func requireIntegration(t *testing.T) {
	t.Helper()
	testimage.RequireRoot(t, "the overlayfs oracle")
	testimage.RequireTool(t, "tar")
	lower, target := t.TempDir(), t.TempDir()
	unmount, err := Mount([]string{lower}, target)
	if err != nil {
		testimage.Unavailable(t, "needs overlayfs: %v", err)
	}
	if err := unmount(); err != nil {
		t.Fatal(err)
	}
}

// attrs are the metadata a staged entry gets just before tar reads it.
type attrs struct {
	mode   uint32
	uid    int
	gid    int
	mtime  Timespec
	xattrs map[string]string
}

// stage builds a directory for GNU tar to archive with an exact entry
// list, so a test decides the order of entries and which parents a layer
// only implies.
type stage struct {
	t     *testing.T
	root  string
	order []string
	meta  map[string]attrs
}

func newStage(t *testing.T) *stage {
	return &stage{t: t, root: t.TempDir(), meta: map[string]attrs{}}
}

func (s *stage) path(rel string) string {
	p := filepath.Join(s.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		s.t.Fatal(err)
	}
	return p
}

func (s *stage) add(rel string, a attrs) {
	s.order = append(s.order, rel)
	s.meta[rel] = a
}

func (s *stage) dir(rel string, a attrs) {
	if err := os.MkdirAll(s.path(rel), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if a.mode == 0 {
		a.mode = 0o755
	}
	s.add(rel, a)
}

func (s *stage) file(rel, content string, a attrs) {
	if err := os.WriteFile(s.path(rel), []byte(content), 0o644); err != nil {
		s.t.Fatal(err)
	}
	if a.mode == 0 {
		a.mode = 0o644
	}
	s.add(rel, a)
}

// marker adds a whiteout or opaque marker: an empty regular file.
func (s *stage) marker(rel string) { s.file(rel, "", attrs{}) }

func (s *stage) hardlink(rel, target string) {
	if err := os.Link(filepath.Join(s.root, target), s.path(rel)); err != nil {
		s.t.Fatal(err)
	}
	s.order = append(s.order, rel)
}

func (s *stage) symlink(rel, target string, a attrs) {
	if err := os.Symlink(target, s.path(rel)); err != nil {
		s.t.Fatal(err)
	}
	a.mode = 0o777
	s.add(rel, a)
}

func (s *stage) fifo(rel string, a attrs) {
	if err := unix.Mkfifo(s.path(rel), 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.add(rel, a)
}

func (s *stage) chardev(rel string, major, minor uint32, a attrs) {
	if err := unix.Mknod(s.path(rel), unix.S_IFCHR|0o600, int(unix.Mkdev(major, minor))); err != nil {
		s.t.Fatal(err)
	}
	s.add(rel, a)
}

// tar applies the staged metadata, deepest path first so that no later
// change touches a directory's mtime, and archives the entries in order.
// compress is "", "gzip" or "zstd", or "append" to add the entries to the
// plain tar out, which is how a test puts entries beneath a non-directory
// of the same layer.
func (s *stage) tar(out, compress string) string {
	s.t.Helper()
	var rels []string
	for rel := range s.meta {
		rels = append(rels, rel)
	}
	depth := func(rel string) int {
		if rel == "." {
			return -1
		}
		return strings.Count(rel, "/")
	}
	sort.Slice(rels, func(i, j int) bool { return depth(rels[i]) > depth(rels[j]) })
	for _, rel := range rels {
		a := s.meta[rel]
		p := filepath.Join(s.root, rel)
		if err := os.Lchown(p, a.uid, a.gid); err != nil {
			s.t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			s.t.Fatal(err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			if err := unix.Chmod(p, a.mode); err != nil {
				s.t.Fatal(err)
			}
		}
		// After chown and chmod, which clear security.capability.
		for k, v := range a.xattrs {
			if err := unix.Lsetxattr(p, k, []byte(v), 0); err != nil {
				s.t.Fatalf("setxattr %s on %s: %v", k, rel, err)
			}
		}
		ts := []unix.Timespec{{Sec: a.mtime.Sec, Nsec: a.mtime.Nsec}, {Sec: a.mtime.Sec, Nsec: a.mtime.Nsec}}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			s.t.Fatal(err)
		}
	}
	list := filepath.Join(s.t.TempDir(), "list")
	if err := os.WriteFile(list, []byte(strings.Join(s.order, "\x00")+"\x00"), 0o644); err != nil {
		s.t.Fatal(err)
	}
	mode := "-cf"
	if compress == "append" {
		mode = "-rf"
	}
	args := []string{"--format=posix", "--xattrs", "--xattrs-include=*", "--numeric-owner",
		"-C", s.root, "--null", "--no-recursion", "-T", list, mode, out}
	switch compress {
	case "gzip":
		args = append(args, "--gzip")
	case "zstd":
		args = append(args, "--zstd")
	}
	if b, err := exec.Command("tar", args...).CombinedOutput(); err != nil {
		s.t.Fatalf("tar %v: %v\n%s", args, err, b)
	}
	return out
}

func mustGet(t *testing.T, tree Tree, p string) Entry {
	t.Helper()
	e, ok := tree[p]
	if !ok {
		t.Fatalf("%s: missing from tree", p)
	}
	return e
}

func mustAbsent(t *testing.T, tree Tree, p string) {
	t.Helper()
	if e, ok := tree[p]; ok {
		t.Errorf("%s: want absent, got %s", p, e.Type)
	}
}

// children returns the names directly under dir, sorted.
func children(tree Tree, dir string) []string {
	var out []string
	for p := range tree {
		if p != "." && filepath.Dir(p) == dir {
			out = append(out, filepath.Base(p))
		}
	}
	sort.Strings(out)
	return out
}
