package integration

import (
	"archive/tar"
	"bytes"
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
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// snapshot describes everything under dir, dir included, without
// following symlinks: type, mode, owner, size, mtime and link target of
// each path, "missing" when dir is not there.
func snapshot(t testing.TB, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		link, _ := os.Readlink(p)
		fmt.Fprintf(&b, "%s %o %d:%d %d %d.%d %s\n", p, st.Mode, st.Uid, st.Gid, st.Size, st.Mtim.Sec, st.Mtim.Nsec, link)
		return nil
	})
	if os.IsNotExist(err) {
		return "missing"
	}
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestRootMustBeAStore points --root at directories that are not stores:
// every command refuses them, naming the directory, and leaves them as
// they were. A missing or empty directory reads as an empty store and
// becomes one only for a command that writes, without a chmod.
func TestRootMustBeAStore(t *testing.T) {
	requireRoot(t)
	sample := sampleImage(t)
	notStores := map[string]func(dir string){
		"home": func(dir string) {
			must(t, os.MkdirAll(filepath.Join(dir, "Documents"), 0o755))
			must(t, os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine\n"), 0o644))
		},
		"oci-layout": func(dir string) { tool(t, "cp", "-a", sample.layout+"/.", dir) },
		"partial-oci-layout": func(dir string) {
			must(t, os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644))
			must(t, os.Mkdir(filepath.Join(dir, "blobs"), 0o755))
		},
	}
	commands := [][]string{{"images"}, {"layers"}, {"inspect", "sample"}, {"verify"}, {"ls", "sample"}, {"cat", "sample", "etc/hostname"}, {"gc"}, {"import", sample.layout}, {"rm", "sample"}, {"tag", "sample", "other"}}
	for name, fill := range notStores {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), name)
			must(t, os.Mkdir(dir, 0o755))
			fill(dir)
			before := snapshot(t, dir)
			for _, args := range commands {
				checkRefused(t, run(t, dir, args...), dir+" is not a layerfs store")
			}
			if after := snapshot(t, dir); after != before {
				t.Errorf("%s changed:\nbefore\n%s\nafter\n%s", dir, before, after)
			}
		})
	}
	t.Run("a file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		must(t, os.WriteFile(file, []byte("x\n"), 0o644))
		for _, args := range commands {
			checkRefused(t, run(t, file, args...), file+" is not a layerfs store")
		}
	})
	// A store whose making was cut short (oci-layout, written last, is
	// missing) reads as empty and is finished by the next import. Commands
	// that change what a store holds (gc, rm, tag) find nothing there and
	// make no store.
	for _, state := range []string{"missing", "empty", "cut short"} {
		t.Run(state, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			if state != "missing" {
				must(t, os.Mkdir(dir, 0o700))
			}
			if state == "cut short" {
				for _, d := range []string{"blobs", "layers"} {
					must(t, os.Mkdir(filepath.Join(dir, d), 0o700))
				}
			}
			before := snapshot(t, dir)
			for _, args := range [][]string{{"images"}, {"layers"}, {"verify"}, {"gc"}} {
				mustRun(t, dir, args...)
			}
			for _, args := range [][]string{{"inspect", "sample"}, {"cat", "sample", "etc/hostname"}, {"rm", "sample"}, {"tag", "sample", "other"}} {
				checkRefused(t, run(t, dir, args...), "not found")
			}
			if after := snapshot(t, dir); after != before {
				t.Errorf("commands with nothing to read or change changed %s:\nbefore\n%s\nafter\n%s", dir, before, after)
			}
			importInto(t, dir, sample)
			if out := mustRun(t, dir, "images"); !strings.Contains(out, "sample") {
				t.Errorf("images after import: %q", out)
			}
			if got := mustStat(t, dir).Mode().Perm(); got != 0o700 {
				t.Errorf("store root mode %o, want 0700", got)
			}
		})
	}
}

// TestRootNotAStoreSaysWhatToGive points --root, as a newcomer might, at
// the OCI layout they mean to import, and at a directory of their own: the
// refusal says what --root takes, and for the layout the import that reads
// it, and the directory is left as it was.
func TestRootNotAStoreSaysWhatToGive(t *testing.T) {
	requireRoot(t)
	layout := filepath.Join(t.TempDir(), "sample")
	tool(t, "cp", "-a", sampleImage(t).layout, layout)
	mine := t.TempDir()
	must(t, os.WriteFile(filepath.Join(mine, "notes.txt"), []byte("mine\n"), 0o644))
	for dir, want := range map[string][]string{
		layout: {"it is an OCI image layout", `"layerfs import ` + layout + `"`, "new or empty directory"},
		mine:   {"new or empty directory"},
	} {
		before := snapshot(t, dir)
		for _, args := range [][]string{{"images"}, {"import", sampleImage(t).layout}, {"gc"}} {
			r := run(t, dir, args...)
			for _, w := range append([]string{dir + " is not a layerfs store"}, want...) {
				if r.code != 1 || !strings.Contains(r.stderr, w) {
					t.Errorf("layerfs --root %s %q: exit %d, stderr %q; want exit 1 and %q", dir, args, r.code, r.stderr, w)
				}
			}
		}
		if after := snapshot(t, dir); after != before {
			t.Errorf("%s changed:\nbefore\n%s\nafter\n%s", dir, before, after)
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestReadOnlyCommandsOnAStoreTheUserCannotWrite has an unprivileged user
// read root's store, made readable to all: every read-only command works,
// a mount serves it, and nothing in the store changes; a writing command
// is refused.
func TestReadOnlyCommandsOnAStoreTheUserCannotWrite(t *testing.T) {
	u := asNobody(t)
	sample := sampleImage(t)
	root := filepath.Join(reachableDir(t), "store")
	importInto(t, root, sample)
	tool(t, "chmod", "-R", "go+rX", root)
	before := snapshot(t, root)
	nobodyRun := func(args ...string) (string, string, error) {
		var stdout, stderr bytes.Buffer
		cmd := u.command(u.bin, append([]string{"--root", root}, args...)...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}
	lowest := strings.Fields(strings.Split(mustRun(t, root, "layers"), "\n")[1])[0]
	for _, args := range [][]string{
		{"images"}, {"layers"}, {"inspect", "sample"}, {"verify"}, {"verify", "sample"},
		{"ls", "-l", "-R", "sample"}, {"cat", "sample", "/etc/hostname"}, {"which", "sample", "/etc/hostname"}, {"diff", lowest, "sample"},
		{"export", "sample", "-o", filepath.Join(u.home, "sample.tar")},
	} {
		stdout, stderr, err := nobodyRun(args...)
		if err != nil {
			t.Errorf("layerfs %s as uid %d: %v\n%s", strings.Join(args, " "), nobody, err, stderr)
			continue
		}
		// Root's export and cat would lease the store while they run: the
		// snapshot is of what the unprivileged user does alone.
		if args[0] == "export" || args[0] == "cat" {
			if want := "sample\n"; args[0] == "cat" && stdout != want {
				t.Errorf("layerfs cat as uid %d printed %q, want %q", nobody, stdout, want)
			}
			continue
		}
		if want := mustRun(t, root, args...); stdout != want {
			t.Errorf("layerfs %s as uid %d printed\n%s\nroot's prints\n%s", strings.Join(args, " "), nobody, stdout, want)
		}
	}
	mnt := u.mkdir("mnt")
	u.layerfs("--root", root, "mount", "--daemon", "sample", mnt)
	t.Cleanup(func() {
		if mountedAt(t, mnt) {
			u.layerfs("umount", mnt)
		}
	})
	var out bytes.Buffer
	cat := u.command("cat", filepath.Join(mnt, "etc/hostname"))
	cat.Stdout, cat.Stderr = &out, &out
	if err := cat.Run(); err != nil || out.String() != "sample\n" {
		t.Errorf("cat through uid %d's mount of root's store: %v %q", nobody, err, out.String())
	}
	u.layerfs("umount", mnt)
	_, stderr, err := nobodyRun("import", sample.layout)
	if err == nil || !strings.Contains(stderr, "owned by uid 0") {
		t.Errorf("import by uid %d into root's store: %v %q; want a refusal naming the owner", nobody, err, stderr)
	}
	if after := snapshot(t, root); after != before {
		t.Errorf("uid %d's commands changed root's store:\nbefore\n%s\nafter\n%s", nobody, before, after)
	}
}

// TestStoreAnotherUserControlsIsRefused has root meet stores another user
// can change: one the user owns, with tmp/ replaced by a symlink to a
// directory of root's, and root's own store made writable by others.
// Root refuses them all, through --root and $LAYERFS_ROOT, and the
// directory the symlink names keeps its mode and its files.
func TestStoreAnotherUserControlsIsRefused(t *testing.T) {
	u := asNobody(t)
	sample := sampleImage(t)
	mine := u.copyLayout(sample, "layout")
	u.layerfs("import", mine.layout)
	userStore := filepath.Join(u.home, "store")
	victim := filepath.Join(reachableDir(t), "victim")
	must(t, os.Mkdir(victim, 0o755))
	must(t, os.WriteFile(filepath.Join(victim, "precious"), []byte("root's\n"), 0o644))
	plant := u.command("sh", "-c", `rm -rf "$1/tmp" && ln -s "$2" "$1/tmp"`, "sh", userStore, victim)
	if out, err := plant.CombinedOutput(); err != nil {
		t.Fatalf("plant as uid %d: %v\n%s", nobody, err, out)
	}
	victimBefore := snapshot(t, victim)
	for _, args := range [][]string{{"images"}, {"gc"}, {"verify"}, {"import", sample.layout}, {"ls", "sample"}} {
		checkRefused(t, run(t, userStore, args...), "owned by uid 65534")
		cmd := exec.Command(layerfsBin(t), args...)
		cmd.Env = append(os.Environ(), "LAYERFS_ROOT="+userStore)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "owned by uid 65534") {
			t.Errorf("LAYERFS_ROOT=%s layerfs %s: %v %q; want a refusal naming the owner", userStore, strings.Join(args, " "), err, out)
		}
	}
	mnt := t.TempDir()
	checkRefused(t, run(t, userStore, "mount", "--daemon", "sample", mnt), "owned by uid 65534")
	if mountedAt(t, mnt) {
		unmount(t, userStore, mnt)
		t.Error("root mounted a store uid 65534 owns")
	}
	if after := snapshot(t, victim); after != victimBefore {
		t.Errorf("the symlink's target changed:\nbefore\n%s\nafter\n%s", victimBefore, after)
	}

	rootStore := t.TempDir()
	importInto(t, rootStore, sample)
	for _, rel := range []string{".", "objects", "objects/sha256", "tmp"} {
		p := filepath.Join(rootStore, rel)
		mode := mustStat(t, p).Mode().Perm()
		must(t, os.Chmod(p, 0o777))
		checkRefused(t, run(t, rootStore, "images"), "writable by group or others")
		checkRefused(t, run(t, rootStore, "gc"), "writable by group or others")
		must(t, os.Chmod(p, mode))
	}
	mustRun(t, rootStore, "verify")
}

// TestSymlinksInsideTheStoreAreNotFollowed plants symlinks, a FIFO and a
// device where root's own store keeps objects, blobs, indexes and temp
// files: verify names each without hanging, a mount answers EIO instead of
// serving the file a symlink points at, export fails, and gc removes the
// symlinks, not what they point at.
func TestSymlinksInsideTheStoreAreNotFollowed(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	sample := sampleImage(t)
	importInto(t, root, sample)
	secret := filepath.Join(t.TempDir(), "secret")
	must(t, os.WriteFile(secret, []byte("SECRET\n"), 0o600)) // as long as "sample\n"
	hostname := objectPath(root, "sample\n")
	removeObject(t, root, "sample\n")
	must(t, os.Symlink(secret, hostname))

	mnt := mountDaemon(t, root, "--allow-other", "sample")
	got, err := os.ReadFile(filepath.Join(mnt, "etc/hostname"))
	if !errors.Is(err, syscall.EIO) || bytes.Contains(got, []byte("SECRET")) {
		t.Errorf("read through a symlinked object: %q, %v; want EIO", got, err)
	}
	unmount(t, root, mnt)
	checkRefused(t, run(t, root, "export", "sample", "-o", filepath.Join(t.TempDir(), "x.tar")), "symlink")

	var objects []string
	must(t, filepath.WalkDir(filepath.Join(root, "objects"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			objects = append(objects, p)
		}
		return err
	}))
	if len(objects) < 2 {
		t.Fatalf("%d objects", len(objects))
	}
	must(t, os.Remove(objects[0]))
	must(t, os.Symlink("/dev/zero", objects[0]))
	must(t, os.Remove(objects[1]))
	must(t, unix.Mkfifo(objects[1], 0o600))
	layer := digest.Digest(strings.Split(mustRun(t, root, "layers", "-q", "--no-trunc"), "\n")[0])
	blob := filepath.Join(root, "blobs", "sha256", layer.Encoded())
	must(t, os.Rename(blob, blob+".moved"))
	must(t, os.Symlink(blob+".moved", blob))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, layerfsBin(t), "--root", root, "verify")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("verify still running after a minute: %s", out)
	}
	if err == nil {
		t.Errorf("verify passed a store with symlinked objects:\n%s", out)
	}
	for _, p := range []string{hostname, objects[0], objects[1], blob} {
		if !strings.Contains(string(out), filepath.Base(p)) {
			t.Errorf("verify does not name %s:\n%s", filepath.Base(p), out)
		}
	}

	// A layer's directory replaced by a symlink to a copy outside.
	layerDir := filepath.Join(root, "layers", "sha256", layer.Encoded())
	outside := filepath.Join(t.TempDir(), "layer")
	tool(t, "cp", "-a", layerDir, outside)
	must(t, os.RemoveAll(layerDir))
	must(t, os.Symlink(outside, layerDir))
	checkRefused(t, run(t, root, "ls", "sample"), "symlink")
	checkRefused(t, run(t, root, "gc"), "symlink")
	must(t, os.Remove(layerDir))
	tool(t, "cp", "-a", outside, layerDir)

	// gc removes a symlink under tmp/, never what it names.
	victim := t.TempDir()
	must(t, os.WriteFile(filepath.Join(victim, "precious"), []byte("kept\n"), 0o644))
	must(t, os.Symlink(victim, filepath.Join(root, "tmp", "planted")))
	before := snapshot(t, victim)
	mustRun(t, root, "gc")
	if after := snapshot(t, victim); after != before {
		t.Errorf("gc changed the directory a symlink in tmp/ named:\nbefore\n%s\nafter\n%s", before, after)
	}
	if _, err := os.Lstat(filepath.Join(root, "tmp", "planted")); !os.IsNotExist(err) {
		t.Errorf("gc left tmp/planted: %v", err)
	}

	// tmp/ itself a symlink: the store is refused before anything is done.
	must(t, os.RemoveAll(filepath.Join(root, "tmp")))
	must(t, os.Symlink(victim, filepath.Join(root, "tmp")))
	checkRefused(t, run(t, root, "gc"), "symlink")
	if after := snapshot(t, victim); after != before {
		t.Errorf("gc changed the directory tmp/ pointed at:\nbefore\n%s\nafter\n%s", before, after)
	}
}

// TestNamesCannotShadowDigests: a name that reads as a digest is refused
// at import, from an OCI layout or a docker-archive, and a digest
// resolves to its own image even where a store kept such a name from
// before the rule.
func TestNamesCannotShadowDigests(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	sample := sampleImage(t)
	importInto(t, root, sample)
	manifest := inspectDigest(t, root, "sample")
	impostor := testimage.Image{Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("etc/hostname", "impostor\n")}}}}
	for _, name := range []string{manifest.String(), manifest.Encoded()[:12], manifest.Encoded(), "sha256:" + manifest.Encoded()[:12]} {
		impostor.Name = name
		checkRefused(t, run(t, root, "import", writeFaultLayout(t, impostor)), "reads as a digest")
		archive := filepath.Join(t.TempDir(), "impostor.tar")
		if !strings.HasPrefix(name, "sha256:") {
			must(t, testimage.WriteDockerArchive(archive, []string{name + ":latest"}, impostor))
			checkRefused(t, run(t, root, "import", archive), "reads as a digest")
		}
	}
	if out := mustRun(t, root, "images"); strings.Count(out, "\n") != 2 {
		t.Errorf("images after the refusals:\n%s", out)
	}

	// A store written before the rule: rename an image to sample's digest.
	impostor.Name = "legacy"
	importInto(t, root, layoutImage{layout: writeFaultLayout(t, impostor), ref: "legacy"})
	legacy := inspectDigest(t, root, "legacy")
	indexPath := filepath.Join(root, "index.json")
	data, err := os.ReadFile(indexPath)
	must(t, err)
	var idx ocispec.Index
	must(t, json.Unmarshal(data, &idx))
	for i, m := range idx.Manifests {
		if m.Digest == legacy {
			idx.Manifests[i].Annotations[ocispec.AnnotationRefName] = manifest.String()
		}
	}
	data, err = json.Marshal(idx)
	must(t, err)
	must(t, os.WriteFile(indexPath, data, 0o600))
	for _, target := range []string{manifest.String(), manifest.Encoded()[:12]} {
		if got := inspectDigest(t, root, target); got != manifest {
			t.Errorf("inspect %s resolved to %s, the image named so, not the image of that digest", target, got)
		}
	}
}

func inspectDigest(t testing.TB, root, target string) digest.Digest {
	t.Helper()
	var out []struct {
		Digest digest.Digest `json:"manifestDigest"`
	}
	must(t, json.Unmarshal([]byte(mustRun(t, root, "inspect", target)), &out))
	if len(out) != 1 {
		t.Fatalf("inspect %s printed %d objects, want 1", target, len(out))
	}
	return out[0].Digest
}

// TestPAXGlobalHeaderIsSkipped imports a layer opening with a PAX global
// header, as git archive writes one: it is skipped, as docker and
// containerd do, and the view is what kernel overlayfs shows.
func TestPAXGlobalHeaderIsSkipped(t *testing.T) {
	requireRoot(t)
	img := writeImage(t, testimage.Image{Name: "global", Layers: []testimage.Layer{{Stream: func(tw *tar.Writer) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "0123456789abcdef"}, Format: tar.FormatPAX}); err != nil {
			return err
		}
		for _, e := range []testimage.Entry{testimage.Dir("d", 0o755), testimage.File("d/f", "f\n")} {
			if err := e.AddTo(tw); err != nil {
				return err
			}
		}
		return nil
	}}}})
	checkMergedView(t, img)
}

// TestSHA512LayerRefused imports an image whose layer is named by a sha512
// digest: refused with that said and the layer named, and nothing of it
// left in the store.
func TestSHA512LayerRefused(t *testing.T) {
	requireRoot(t)
	img := writeImage(t, testimage.Image{Name: "sha512", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("f", "f\n")}}}})
	idx, err := testimage.ReadIndex(img.layout)
	must(t, err)
	mdata, err := os.ReadFile(testimage.BlobPath(img.layout, idx.Manifests[0].Digest))
	must(t, err)
	var m ocispec.Manifest
	must(t, json.Unmarshal(mdata, &m))
	blob, err := os.ReadFile(img.blobs[0])
	must(t, err)
	long := digest.SHA512.FromBytes(blob)
	must(t, os.MkdirAll(filepath.Join(img.layout, "blobs", "sha512"), 0o755))
	must(t, os.WriteFile(filepath.Join(img.layout, "blobs", "sha512", long.Encoded()), blob, 0o644))
	m.Layers[0].Digest = long
	mdata, err = json.Marshal(m)
	must(t, err)
	idx.Manifests[0].Digest, idx.Manifests[0].Size = digest.FromBytes(mdata), int64(len(mdata))
	must(t, os.WriteFile(testimage.BlobPath(img.layout, idx.Manifests[0].Digest), mdata, 0o644))
	data, err := json.Marshal(idx)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(img.layout, "index.json"), data, 0o644))

	root := t.TempDir()
	r := run(t, root, "import", img.layout)
	checkRefused(t, r, "sha512 digests are not supported")
	if !strings.Contains(r.stderr, long.String()) {
		t.Errorf("the refusal does not name layer %s: %s", long, r.stderr)
	}
	for _, dir := range []string{"layers/sha256", "tmp", "objects/sha256"} {
		if ents, err := os.ReadDir(filepath.Join(root, dir)); err != nil || len(ents) > 0 {
			t.Errorf("%s after the refusal: %v %v", dir, ents, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "layers", "sha512")); !os.IsNotExist(err) {
		t.Errorf("layers/sha512 after the refusal: %v", err)
	}
}

// TestAllowOtherRefusalSaysWhy mounts --daemon --allow-other as a user
// where /etc/fuse.conf lacks user_allow_other (a private copy bound over
// it, in a mount namespace of the test's own, so the machine's file is
// never touched): the error gives fusermount3's reason.
func TestAllowOtherRefusalSaysWhy(t *testing.T) {
	u := asNobody(t)
	mine := u.copyLayout(sampleImage(t), "layout")
	u.layerfs("import", mine.layout)
	conf := filepath.Join(u.home, "fuse.conf")
	must(t, os.WriteFile(conf, []byte("# no user_allow_other here\n"), 0o644))
	mnt := u.mkdir("mnt")
	unshare := testimage.RequireTool(t, "unshare")
	script := `mount --bind "$1" /etc/fuse.conf || exit 99
"$2" --reuid 65534 --regid 65534 --clear-groups "$3" --root "$4" mount --daemon --allow-other sample "$5"
rc=$?
umount -l "$5" 2>/dev/null
exit $rc`
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh", conf, u.setpriv, u.bin, filepath.Join(u.home, "store"), mnt)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + u.home, "TMPDIR=" + u.home}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("mount --allow-other without user_allow_other: %v\n%s", err, stderr.Bytes())
	}
	if msg := stderr.String(); !strings.Contains(msg, "user_allow_other") || !strings.Contains(msg, "/etc/fuse.conf") {
		t.Errorf("the refusal does not say why: %q", msg)
	}
}

// TestOverlayPrivateXattrsAreShownNotObeyed reads the xattrs of the
// overlay-private rule case in every view: the merged and single-layer
// views show them as the image has them, the overlay-format view escaped,
// and kernel overlayfs stacked over the overlay-format mounts shows them
// unescaped again while obeying none (TestOverlayViewsStackToMergedView
// compares the whole trees).
func TestOverlayPrivateXattrsAreShownNotObeyed(t *testing.T) {
	requireRoot(t)
	var c testimage.RuleCase
	for _, rc := range testimage.RuleCases() {
		if rc.Name == "overlay-private-xattrs" {
			c = rc
		}
	}
	img := ruleImage(t, c)
	root := t.TempDir()
	importInto(t, root, img)
	merged := mountDaemon(t, root, img.ref)
	single := mountDaemon(t, root, img.layers[1].String())
	var lowers []string
	for _, l := range img.layers {
		lowers = append(lowers, mountDaemon(t, root, "--overlay", l.String()))
	}
	stack := overlayMount(t, lowers)
	xattr := func(p, name string) string {
		v, err := getXattr(p, name)
		if err != nil {
			return "error: " + err.Error()
		}
		return v
	}
	for path, x := range map[string][2]string{
		"r":       {"trusted.overlay.redirect", "/a"},
		"d":       {"trusted.overlay.opaque", "y"},
		"w":       {"trusted.overlay.opaque", "x"},
		"w/y":     {"trusted.overlay.whiteout", ""},
		"m":       {"trusted.overlay.metacopy", ""},
		"u":       {"user.overlay.opaque", "y"},
		"escaped": {"trusted.overlay.overlay.opaque", "y"},
	} {
		name, want := x[0], x[1]
		escaped := strings.Replace(name, ".overlay.", ".overlay.overlay.", 1)
		for view, dir := range map[string]string{"merged": merged, "single-layer": single, "overlayfs stack": stack} {
			shown := name
			if view == "overlayfs stack" && strings.HasPrefix(name, "user.") {
				// Mounted by root, overlayfs leaves user.overlay.* alone.
				shown = escaped
			}
			if got := xattr(filepath.Join(dir, path), shown); got != want {
				t.Errorf("%s view: %s %s = %q, want %q", view, path, shown, got, want)
			}
		}
		if got := xattr(filepath.Join(lowers[1], path), escaped); got != want {
			t.Errorf("overlay-format view: %s %s = %q, want %q", path, escaped, got, want)
		}
		if got := xattr(filepath.Join(lowers[1], path), name); !strings.Contains(got, "no data") {
			t.Errorf("overlay-format view: %s shows %s unescaped: %q", path, name, got)
		}
	}
	for _, p := range []string{"d/old", "w/y", "u/old"} {
		if _, err := os.Lstat(filepath.Join(stack, p)); err != nil {
			t.Errorf("overlayfs stack hides %s: %v", p, err)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(stack, "r")); err != nil || len(ents) != 0 {
		t.Errorf("overlayfs stack follows r's redirect: %v %v", ents, err)
	}
	if got, err := os.ReadFile(filepath.Join(stack, "m")); err != nil || string(got) != "upper m\n" {
		t.Errorf("overlayfs stack reads m as %q, %v", got, err)
	}
}

func getXattr(p, name string) (string, error) {
	buf := make([]byte, 1<<16)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}
