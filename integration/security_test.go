package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"oras.land/oras-go/v2/content/oci"
)

// TestStoreHoldsOnlyPlainFiles imports layers full of what must never
// reach the host (setuid and setgid files, devices, FIFOs, capabilities,
// files of other owners) and checks the store: directories 0700, and
// nothing but plain files of the store's owner, mode 0600 at most,
// without special bits or a capability.
func TestStoreHoldsOnlyPlainFiles(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	mustRun(t, root, "import", "../testdata/sample")
	var special testimage.RuleCase
	for _, c := range testimage.RuleCases() {
		if c.Name == "special-files" || c.Name == "special-mode-bits" || c.Name == "owners" || c.Name == "xattrs" {
			special.Layers = append(special.Layers, c.Layers...)
		}
	}
	mustRun(t, root, "import", writeFaultLayout(t, testimage.Image{Name: "special", Layers: special.Layers}))
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n++
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		mode := st.Mode & unix.S_IFMT
		perm := st.Mode & 0o7777
		switch {
		case st.Uid != uint32(os.Geteuid()) || st.Gid != uint32(os.Getegid()):
			t.Errorf("%s: owned by %d:%d, not the store's owner", p, st.Uid, st.Gid)
		case mode == unix.S_IFDIR && perm != 0o700:
			t.Errorf("%s: directory mode %o, want 0700", p, perm)
		case mode != unix.S_IFDIR && mode != unix.S_IFREG:
			t.Errorf("%s: not a plain file (type %o)", p, mode)
		case mode == unix.S_IFREG && perm&^0o600 != 0:
			t.Errorf("%s: mode %o, more than 0600", p, perm)
		}
		if sz, _ := unix.Lgetxattr(p, "security.capability", nil); sz > 0 {
			t.Errorf("%s: carries a capability", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d store paths checked", n)
}

// mountOptions returns the per-mount and the superblock options of the
// mount at mnt, from /proc/self/mountinfo.
func mountOptions(t *testing.T, mnt string) (mountOpts, superOpts []string) {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	// A kernel mount of many layers has a line of tens of KiB.
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		before, after, ok := strings.Cut(sc.Text(), " - ")
		left, right := strings.Fields(before), strings.Fields(after)
		if ok && len(left) > 5 && len(right) > 2 && left[4] == mnt {
			return strings.Split(left[5], ","), strings.Split(right[2], ",")
		}
	}
	t.Fatalf("%s is not in /proc/self/mountinfo", mnt)
	return nil, nil
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// reachableDir is a new directory that every user can traverse to, for
// mountpoints that another user must reach.
func reachableDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// asNobodyRun runs a command as uid and gid 65534 and returns its error,
// holding what it printed.
func asNobodyRun(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, out)
	}
	return nil
}

// denied fails t unless err is a refusal for want of permission.
func denied(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("%s: %v, want permission denied", what, err)
	}
}

// TestMountDefaults checks what a mount is by default: read-only, nosuid,
// nodev, default_permissions, for its owner only; and that --allow-other
// lets others in with the image's modes still enforced.
func TestMountDefaults(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	mustRun(t, root, "import", "../testdata/sample")
	var devs testimage.RuleCase
	for _, c := range testimage.RuleCases() {
		if c.Name == "special-files" {
			devs = c
		}
	}
	mustRun(t, root, "import", writeFaultLayout(t, testimage.Image{Name: "devs", Layers: devs.Layers}))

	mnt := reachableDir(t)
	serveLogged(t, root, mnt, "sample")
	opts, super := mountOptions(t, mnt)
	for _, o := range []string{"ro", "nosuid", "nodev"} {
		if !has(opts, o) {
			t.Errorf("mount options %v lack %s", opts, o)
		}
	}
	if !has(super, "default_permissions") || has(super, "allow_other") {
		t.Errorf("superblock options %v: want default_permissions and no allow_other", super)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if want := int64(unix.ST_RDONLY | unix.ST_NOSUID | unix.ST_NODEV); st.Flags&want != want {
		t.Errorf("statfs flags %#x lack ro, nosuid, nodev", st.Flags)
	}
	denied(t, "another user reads a mount made without --allow-other", asNobodyRun("cat", filepath.Join(mnt, "etc", "passwd")))

	other := reachableDir(t)
	serveLogged(t, root, other, "--allow-other", "sample")
	if _, super := mountOptions(t, other); !has(super, "allow_other") || !has(super, "default_permissions") {
		t.Errorf("--allow-other mount: superblock options %v", super)
	}
	if err := asNobodyRun("cat", filepath.Join(other, "etc", "passwd")); err != nil {
		t.Errorf("another user cannot read a 0644 file through --allow-other: %v", err)
	}
	// home/user is 0750 and 1000:1000 in the image: nobody is kept out.
	denied(t, "another user lists home/user, 0750 in the image", asNobodyRun("ls", filepath.Join(other, "home", "user")))

	devMnt := t.TempDir()
	serveLogged(t, root, devMnt, "devs")
	if f, err := os.Open(filepath.Join(devMnt, "dev", "null")); !errors.Is(err, syscall.EACCES) {
		if f != nil {
			f.Close()
		}
		t.Errorf("open of the image's device node through a nodev mount: %v, want EACCES", err)
	}
}

// anotherUsersLink plants, as another user, a symlink to target in a
// sticky world-writable directory (as /tmp is), with
// fs.protected_symlinks on for the test: the kernel then refuses root
// that link, as cat shows. layerfs must not follow it by itself either.
func anotherUsersLink(t *testing.T, target string) string {
	t.Helper()
	const sysctl = "/proc/sys/fs/protected_symlinks"
	was, err := os.ReadFile(sysctl)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sysctl, []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(sysctl, was, 0) })
	sticky := t.TempDir()
	if err := os.Chmod(sticky, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(sticky, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("cat", link).Run(); err == nil {
		t.Fatalf("the kernel follows %s, another user's symlink in a sticky directory, for root", link)
	}
	return link
}

// TestOutputNotThroughAnotherUsersSymlink gives root's export -o and
// build -o another user's link in /tmp to a file of root's: following
// it would replace the file with the output.
func TestOutputNotThroughAnotherUsersSymlink(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	dir := t.TempDir()
	victim := filepath.Join(dir, "roots-file")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"export", "build"} {
		link := anotherUsersLink(t, victim)
		r := run(t, root, cmd, "sample", "-o", link)
		if r.code == 0 || !strings.Contains(r.stderr, link) || !strings.Contains(r.stderr, "protected_symlinks") {
			t.Errorf("%s -o through another user's symlink: exit %d, stderr %q; want a refusal naming the link", cmd, r.code, r.stderr)
		}
		if b, err := os.ReadFile(victim); err != nil || string(b) != "precious\n" {
			t.Errorf("%s -o through another user's symlink wrote the file it points to: now %d bytes (%v)", cmd, len(b), err)
		}
		if st, err := os.Lstat(link); err != nil || st.Mode()&fs.ModeSymlink == 0 {
			t.Errorf("%s -o replaced the link: %v, %v", cmd, st, err)
		}
		if entries, err := os.ReadDir(dir); err != nil || len(entries) != 1 {
			t.Errorf("%s -o left files beside the file: %v, %v", cmd, entries, err)
		}
	}
}

// TestOutputNotIntoAnotherUsersFile has another user leave, in a sticky
// world-writable directory (as /tmp is), a file and a FIFO at the names
// root's export -o is then given: replaced, the file would be the other
// user's, holding root's output; the FIFO would hand it to them. Both
// must be refused, each left as it was, and nothing written.
func TestOutputNotIntoAnotherUsersFile(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	sticky := t.TempDir()
	must(t, os.Chmod(sticky, os.ModeSticky|0o777))
	file, fifo := filepath.Join(sticky, "file.tar"), filepath.Join(sticky, "fifo.tar")
	must(t, os.WriteFile(file, []byte("theirs\n"), 0o644))
	must(t, unix.Mkfifo(fifo, 0o666))
	for _, p := range []string{file, fifo} {
		must(t, os.Lchown(p, 65534, 65534))
	}
	reader, err := os.OpenFile(fifo, os.O_RDONLY|unix.O_NONBLOCK, 0)
	must(t, err)
	defer reader.Close()
	for _, out := range []string{file, fifo} {
		r := run(t, root, "export", "sample", "-o", out)
		if r.code == 0 || !strings.Contains(r.stderr, "another user's file") {
			t.Errorf("export -o %s, another user's in a sticky directory: exit %d, stderr %q; want a refusal", filepath.Base(out), r.code, r.stderr)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "theirs\n" {
		t.Errorf("the other user's file was replaced: now %d bytes (%v)", len(b), err)
	}
	if n, _ := reader.Read(make([]byte, 1)); n > 0 {
		t.Errorf("export wrote into the other user's FIFO")
	}
	if entries, err := os.ReadDir(sticky); err != nil || len(entries) != 2 {
		t.Errorf("export left files beside them: %v, %v", entries, err)
	}
}

// TestStoreNotThroughAnotherUsersSymlink gives root's commands, as
// --root, another user's link in /tmp to root's store: followed, it
// would let that user point root's rm and gc at a store root did not
// name.
func TestStoreNotThroughAnotherUsersSymlink(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	link := anotherUsersLink(t, root)
	for _, args := range [][]string{{"rm", "sample"}, {"gc"}, {"ls", "sample"}} {
		if r := run(t, link, args...); r.code == 0 || !strings.Contains(r.stderr, "permission denied") {
			t.Errorf("layerfs --root LINK %q: exit %d, stderr %q; want it refused", args, r.code, r.stderr)
		}
	}
	if out := mustRun(t, root, "images", "-q"); strings.Count(out, "\n") != 1 {
		t.Errorf("the store through the link lost its image: images -q %q", out)
	}
}

// TestImageNamesWriteNoEscapesToATerminal imports an image whose name,
// paths, link target and platform variant hold an OSC sequence that
// would retitle a terminal (or, in another, write to the clipboard), for
// another platform than the host's so that opening it logs a warning
// naming it, beside an artifact of such a type, which import skips
// saying so. ls to a terminal, the warning on a terminal, images,
// import's line of what it skipped and an error listing the image's
// name must show the sequence escaped, never write it.
func TestImageNamesWriteNoEscapesToATerminal(t *testing.T) {
	requireRoot(t)
	const osc = "\x1b]0;owned\a"
	name := "evil" + osc
	layout := writeFaultLayout(t, testimage.Image{Name: name, Arch: "s390x", Variant: "v" + osc, Layers: []testimage.Layer{{Entries: []testimage.Entry{
		testimage.Dir("dir"+osc, 0o755),
		testimage.File("dir"+osc+"/file"+osc, "x"),
		testimage.Symlink("link", "to"+osc),
	}}}})
	ociStore, err := oci.New(layout)
	if err != nil {
		t.Fatal(err)
	}
	blob := pushBytes(t, ociStore, "application/vnd.example.data+json", `{"data":1}`)
	artifactType := "application/vnd.example" + osc
	manifest, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: artifactType, Config: ocispec.DescriptorEmptyJSON, Layers: []ocispec.Descriptor{blob}})
	if err != nil {
		t.Fatal(err)
	}
	pushBytes(t, ociStore, ocispec.DescriptorEmptyJSON.MediaType, string(ocispec.DescriptorEmptyJSON.Data))
	artifact := pushBytes(t, ociStore, ocispec.MediaTypeImageManifest, string(manifest))
	artifact.ArtifactType = artifactType
	if err := ociStore.Tag(context.Background(), artifact, "artifact"); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	written := func(what, s string) {
		t.Helper()
		if strings.Contains(s, "\x1b]") || strings.Contains(s, "\a") {
			t.Errorf("%s wrote the escape sequence: %q", what, s)
		}
		if !strings.Contains(s, `\x1b]0;owned\a`) {
			t.Errorf("%s does not show the name escaped: %q", what, s)
		}
	}
	imported := run(t, root, "import", layout)
	if imported.code != 0 {
		t.Fatalf("import: exit %d: %s", imported.code, imported.stderr)
	}
	written("import's line of the artifact it skipped", imported.stderr)
	for _, args := range [][]string{{"ls", name}, {"ls", "-l", name}, {"ls", "-R", name}} {
		shown, _, code := runOnTTY(t, root, true, true, args...)
		if code != 0 {
			t.Fatalf("%q on a terminal: exit %d: %q", args, code, shown)
		}
		written(fmt.Sprintf("%q on a terminal", args), shown)
		if !strings.Contains(shown, "is for linux/s390x") {
			t.Errorf("%q on a terminal: no warning of the other platform: %q", args, shown)
		}
	}
	written("images", mustRun(t, root, "images"))
	r := run(t, root, "import", layout+":nope")
	if r.code == 0 {
		t.Fatalf("import of a ref the layout lacks: exit 0")
	}
	written("import's error listing the layout's names", r.stderr)
	if out := mustRun(t, root, "ls", name, "dir"+osc); out != "file"+osc+"\n" {
		t.Errorf("ls to a pipe: %q; want the name as it is, as GNU ls writes it", out)
	}
}
