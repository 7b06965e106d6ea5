package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/erofs"
	layerfs "github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/store"
	"github.com/opencontainers/go-digest"
)

// kernelMount mounts target from store root with mount --kernel at a new
// directory, unmounted with layerfs umount when the test ends (detached
// by force, failing the test, if that does not work).
func kernelMount(t testing.TB, root string, target ...string) string {
	t.Helper()
	mnt := t.TempDir()
	args := append(append([]string{"mount", "--kernel"}, target...), mnt)
	mustRun(t, root, args...)
	t.Cleanup(func() { unmount(t, root, mnt) })
	return mnt
}

// metaFiles lists the store's cached meta images and records.
func metaFiles(t testing.TB, root string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, "meta"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// metaImagePath is the one cached meta image of the store at root.
func metaImagePath(t testing.TB, root string) string {
	t.Helper()
	var images []string
	for _, n := range metaFiles(t, root) {
		if strings.HasSuffix(n, ".erofs") {
			images = append(images, filepath.Join(root, "meta", n))
		}
	}
	if len(images) != 1 {
		t.Fatalf("meta images in %s: %q, want one", root, images)
	}
	return images[0]
}

// TestKernelMountMatchesOracle: for every rule case, the sample and the
// Debian image, mount --kernel shows exactly what kernel overlayfs over
// the layers as snapshotters unpack them shows, every attribute of every
// entry; each layer mounted alone with --kernel shows exactly what the
// FUSE mount of that layer shows (which TestSingleLayerViewMatchesTarListing
// checks against GNU tar). The cached image passes fsck.erofs.
func TestKernelMountMatchesOracle(t *testing.T) {
	requireRoot(t)
	fsck := testimage.RequireTool(t, "fsck.erofs")
	imageCases(t, extractableRuleCases(), func(t *testing.T, img layoutImage) {
		root := t.TempDir()
		importInto(t, root, img)
		mnt := kernelMount(t, root, img.ref)
		requireSame(t, "mount --kernel "+img.ref, oracleTree(t, img.blobs), walk(t, mnt))
		if o, err := exec.Command(fsck, metaImagePath(t, root)).CombinedOutput(); err != nil {
			t.Errorf("fsck.erofs of the meta image: %v\n%s", err, o)
		}
		for i, d := range img.layers {
			want := walkMount(t, root, d.String())
			requireSame(t, fmt.Sprintf("mount --kernel of layer %d (%s)", i, d), want, walk(t, kernelMount(t, root, d.String())))
		}
	})
}

// TestKernelMountPlatform: --platform chooses the platform of an image
// index, and a stack of layer digests mounts as its merged view, with the
// cached image of the same view by the image's name.
func TestKernelMountPlatform(t *testing.T) {
	requireRoot(t)
	layout, descs, _ := multiPlatformLayout(t)
	root := t.TempDir()
	mustRun(t, root, "import", "--all-platforms", layout)
	for i, platform := range []string{"linux/amd64", "linux/arm64"} {
		blobs := layerBlobs(t, layout, descs[i])
		requireSame(t, "mount --kernel --platform "+platform, oracleTree(t, blobs), walk(t, kernelMount(t, root, "--platform", platform, "multi")))
	}
	m, _, err := testimage.ReadImage(layout, descs[1])
	must(t, err)
	var layers []string
	for _, l := range m.Layers {
		layers = append(layers, l.Digest.String())
	}
	requireSame(t, "mount --kernel of layer digests", oracleTree(t, layerBlobs(t, layout, descs[1])), walk(t, kernelMount(t, root, layers...)))
	// The stack is the arm64 image's view: one image in the cache for both.
	if n := len(metaFiles(t, root)); n != 4 {
		t.Errorf("%d meta files for two views, want 4 (an image and a record each): %q", n, metaFiles(t, root))
	}
}

// TestKernelMountHostile: an image whose own trusted.overlay xattrs
// redirect a file to another image's object, claim metacopy and mark a
// directory opaque over a lower one shows exactly its own tree through
// mount --kernel, as its FUSE mount shows it: its own bytes, the lower
// directory's children, the xattrs as the image has them.
func TestKernelMountHostile(t *testing.T) {
	requireRoot(t)
	secret := "another image's secret\n"
	other := writeImage(t, testimage.Image{Name: "other", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("secret", secret)}}}})
	// Where the kernel mount's data-only layer has the other image's
	// secret, and where the store's objects directory has it.
	secretPath := store.LinkPath(digest.FromString(secret))
	secretObject, err := erofs.ObjectPath(digest.FromString(secret).String())
	must(t, err)
	hostile := writeImage(t, testimage.Image{Name: "hostile", Layers: []testimage.Layer{
		{Entries: []testimage.Entry{testimage.Dir("d", 0o755), testimage.File("d/old", "lower d/old\n")}},
		{Entries: []testimage.Entry{
			testimage.File("redirected", "my own bytes\n").WithXattr("trusted.overlay.redirect", secretPath).WithXattr("trusted.overlay.metacopy", ""),
			testimage.File("by-object", "mine too\n").WithXattr("trusted.overlay.redirect", secretObject).WithXattr("trusted.overlay.metacopy", ""),
			testimage.File("empty", "").WithXattr("trusted.overlay.redirect", secretPath).WithXattr("trusted.overlay.metacopy", ""),
			testimage.Dir("d", 0o755).WithXattr("trusted.overlay.opaque", "y"),
			testimage.File("d/new", "new\n"),
			testimage.Dir("moved", 0o755).WithXattr("trusted.overlay.redirect", "/"+other.layers[0].Encoded()+"/links"),
		}},
	}})
	root := t.TempDir()
	importInto(t, root, other)
	importInto(t, root, hostile)
	mnt := kernelMount(t, root, hostile.ref)
	requireSame(t, "mount --kernel of the hostile image", walkMount(t, root, hostile.ref), walk(t, mnt))
	for p, want := range map[string]string{"redirected": "my own bytes\n", "by-object": "mine too\n", "empty": "", "d/old": "lower d/old\n", "d/new": "new\n"} {
		if got, err := os.ReadFile(filepath.Join(mnt, p)); err != nil || string(got) != want {
			t.Errorf("%s reads %q, %v; want %q", p, got, err, want)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(mnt, "moved")); err != nil || len(ents) != 0 {
		t.Errorf("moved follows its redirect into the objects: %v %v", ents, err)
	}
	if got, err := getXattr(filepath.Join(mnt, "redirected"), "trusted.overlay.redirect"); err != nil || got != secretPath {
		t.Errorf("redirected's trusted.overlay.redirect = %q, %v; want the image's %q", got, err, secretPath)
	}
}

// TestKernelMountLifecycle: mounts lists a kernel mount; gc, rm --force
// and gc again leave it whole; umount leaves nothing mounted; gc then
// frees its meta image; a second mount of a view takes the cached image
// as it is; a damaged one is reported by verify and rebuilt by the next
// mount.
func TestKernelMountLifecycle(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	want := walkMount(t, root, "sample")
	mnt := kernelMount(t, root, "sample")
	requireSame(t, "mount --kernel sample", want, walk(t, mnt))

	var listed []struct{ Mountpoint, Target, State, Type string }
	must(t, json.Unmarshal([]byte(mustRun(t, root, "mounts", "--format", "json")), &listed))
	found := false
	for _, m := range listed {
		if m.Mountpoint == mnt {
			found = true
			if m.Target != "sample" || m.Type != "kernel" || m.State != "mounted" {
				t.Errorf("mounts lists %+v; want target sample, type kernel, state mounted", m)
			}
		}
	}
	if !found {
		t.Errorf("mounts does not list %s: %+v", mnt, listed)
	}
	for _, r := range tableRows(t, mustRun(t, root, "mounts"), "MOUNTPOINT", "TARGET", "STORE", "PID", "STATE", "TYPE") {
		if r[0] == mnt && (r[1] != "sample" || r[2] != root || r[3] != "-" || r[5] != "kernel") {
			t.Errorf("mounts table row %q", r)
		}
	}

	meta := metaImagePath(t, root)
	mustRun(t, root, "gc")
	requireSame(t, "mount --kernel after gc", want, walk(t, mnt))
	checkRefused(t, run(t, root, "rm", "sample"), "served at "+mnt+" (kernel mount)")
	mustRun(t, root, "rm", "--force", "sample")
	mustRun(t, root, "gc")
	requireSame(t, "mount --kernel after rm --force and gc", want, walk(t, mnt))
	if _, err := os.Stat(meta); err != nil {
		t.Errorf("gc removed the meta image of a live kernel mount: %v", err)
	}

	unmount(t, root, mnt)
	if mountedAt(t, mnt) {
		t.Fatalf("%s is still mounted after layerfs umount", mnt)
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	must(t, err)
	if bytes.Contains(mountinfo, []byte(mnt)) || bytes.Contains(mountinfo, []byte(root)) {
		t.Errorf("mountinfo still names %s or its store after umount:\n%s", mnt, mountinfo)
	}
	if r := run(t, root, "umount", mnt); r.code == 0 {
		t.Errorf("a second umount of %s succeeded", mnt)
	}
	mustRun(t, root, "gc")
	if left := metaFiles(t, root); len(left) != 0 {
		t.Errorf("gc left meta files of an image removed and no longer mounted: %q", left)
	}

	// A second mount takes the cached image as it is.
	root = sampleStore(t)
	unmount(t, root, kernelMount(t, root, "sample"))
	meta = metaImagePath(t, root)
	before := mustStat(t, meta)
	again := kernelMount(t, root, "sample")
	requireSame(t, "the second mount --kernel", want, walk(t, again))
	if after := mustStat(t, meta); !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("the second mount rewrote the cached image: %v, then %v", before.ModTime(), after.ModTime())
	}
	unmount(t, root, again)
	mustRun(t, root, "gc")
	if _, err := os.Stat(meta); err != nil {
		t.Errorf("gc removed the meta image of an image still in the store: %v", err)
	}

	// A damaged image: verify says so, the next mount builds it again.
	data, err := os.ReadFile(meta)
	must(t, err)
	data[len(data)/2] ^= 0xff
	must(t, os.WriteFile(meta, data, 0o600))
	r := run(t, root, "verify")
	if r.code != 1 || !strings.Contains(r.stderr, "meta image ") || !strings.Contains(r.stderr, "rebuilds it") {
		t.Errorf("verify of a damaged meta image: exit %d, stderr %q", r.code, r.stderr)
	}
	requireSame(t, "mount --kernel over a damaged cached image", want, walk(t, kernelMount(t, root, "sample")))
	if r := run(t, root, "verify"); r.code != 0 {
		t.Errorf("verify after the rebuild: exit %d, stderr %q", r.code, r.stderr)
	}

	// A layer extracted before layers had links gets them from the next
	// mount; a damaged link is reported and linked again by verify.
	dirs, err := filepath.Glob(filepath.Join(root, "layers", "sha256", "*", "links"))
	must(t, err)
	var links string
	var names []os.DirEntry
	for _, d := range dirs {
		if names, err = os.ReadDir(d); err == nil && len(names) > 0 {
			links = d
			break
		}
	}
	if links == "" {
		t.Fatalf("no layer of the sample has links to objects: %q", dirs)
	}
	must(t, os.RemoveAll(links))
	requireSame(t, "mount --kernel over a layer without links", want, walk(t, kernelMount(t, root, "sample")))
	victim := filepath.Join(links, names[0].Name())
	must(t, os.Remove(victim))
	must(t, os.WriteFile(victim, []byte("not the object\n"), 0o400))
	r = run(t, root, "verify")
	if r.code != 1 || !strings.Contains(r.stderr, "links") || !strings.Contains(r.stderr, "image sample is affected") {
		t.Errorf("verify of a damaged link: exit %d, stderr %q", r.code, r.stderr)
	}
	requireSame(t, "mount --kernel after verify linked a damaged link again", want, walk(t, kernelMount(t, root, "sample")))
	if r := run(t, root, "verify"); r.code != 0 {
		t.Errorf("verify after the links were made again: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestKernelMountRelinked: a link damaged under a live kernel mount
// reads wrong until verify links it again, in the directory the mount
// holds as a data-only layer, after which the mount reads the file's own
// bytes without being made again.
func TestKernelMountRelinked(t *testing.T) {
	requireRoot(t)
	body := strings.Repeat("the file's own bytes\n", 200)
	img := writeImage(t, testimage.Image{Name: "big", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("data", body)}}}})
	root := t.TempDir()
	importInto(t, root, img)
	mnt := kernelMount(t, root, "big")
	link := filepath.Join(root, "layers", "sha256", img.layers[0].Encoded(), "links", digest.FromString(body).Encoded())
	must(t, os.Remove(link))
	must(t, os.WriteFile(link, []byte(strings.Repeat("x", len(body))), 0o400))
	r := run(t, root, "verify")
	if r.code != 1 || !strings.Contains(r.stderr, "linked again") {
		t.Errorf("verify of a damaged link: exit %d, stderr %q", r.code, r.stderr)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "data")); err != nil || string(got) != body {
		t.Errorf("data through the mount after verify: %d bytes, %v; want its own %d", len(got), err, len(body))
	}
	if r := run(t, root, "verify"); r.code != 0 {
		t.Errorf("verify after the link was made again: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestMountLongStackSource: a stack of four layers given by digest is
// longer than the 255 bytes the kernel takes as a mount source; both
// kinds of mount of it work, show the stack's view, and are listed by
// the stack's first layers, cut short with "...".
func TestMountLongStackSource(t *testing.T) {
	requireRoot(t)
	var layers []testimage.Layer
	for i := range 4 {
		layers = append(layers, testimage.Layer{Entries: []testimage.Entry{testimage.File(fmt.Sprintf("f%d", i), strings.Repeat("x", 1000+i))}})
	}
	img := writeImage(t, testimage.Image{Name: "four", Layers: layers})
	root := t.TempDir()
	importInto(t, root, img)
	var digests []string
	for _, l := range img.layers {
		digests = append(digests, l.String())
	}
	stack := strings.Join(digests, ",")
	want := walkMount(t, root, stack)
	kernel := kernelMount(t, root, stack)
	requireSame(t, "mount --kernel of a stack of four digests", want, walk(t, kernel))
	fuse := mountDaemon(t, root, stack)
	out := mustRun(t, root, "mounts", "--no-trunc")
	for _, mnt := range []string{kernel, fuse} {
		line := ""
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, mnt) {
				line = l
			}
		}
		if !strings.Contains(line, digests[0]+","+digests[1]+","+digests[2]) || !strings.Contains(line, "...") {
			t.Errorf("layerfs mounts lists %s as %q, want the stack cut short:\n%s", mnt, line, out)
		}
	}
}

// TestKernelMountRefused: mount --kernel without root, or at a
// mountpoint that is not one, says why and where to go, exits 1, and
// mounts and writes nothing; with a flag only FUSE mounts take it is a
// usage error (exit 2, with the usage line) that mounts nothing either.
func TestKernelMountRefused(t *testing.T) {
	root := sampleStore(t)
	mnt := t.TempDir()
	for _, c := range []struct {
		flag, expect string
	}{
		{"--overlay", "--overlay is for FUSE mounts"},
		{"--allow-other", "--allow-other is for FUSE mounts"},
		{"--fuse-debug", "--fuse-debug is for FUSE mounts"},
	} {
		r := run(t, root, "mount", "--kernel", c.flag, "sample", mnt)
		if r.code != 2 || !strings.HasPrefix(r.stderr, "layerfs: ") || !strings.Contains(r.stderr, c.expect) || !strings.Contains(r.stderr, "\nUsage: layerfs mount") {
			t.Errorf("mount --kernel %s: exit %d, stderr %q; want a usage error (exit 2) saying %q", c.flag, r.code, r.stderr, c.expect)
		}
	}
	checkRefused(t, run(t, root, "mount", "--kernel", "sample", filepath.Join(mnt, "missing")), "no such file")
	if mountedAt(t, mnt) || len(metaFiles(t, root)) != 0 {
		t.Errorf("a refused mount --kernel mounted %s or wrote meta files %q", mnt, metaFiles(t, root))
	}

	u := asNobody(t)
	layout := u.copyLayout(sampleImage(t), "sample")
	u.layerfs("import", layout.layout)
	dir := u.mkdir("mnt")
	var stderr bytes.Buffer
	cmd := u.command(u.bin, "--root", filepath.Join(u.home, "store"), "mount", "--kernel", "sample", dir)
	cmd.Stderr = &stderr
	out, err := commandWithin(t, cmd, commandDeadline)
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	checkRefused(t, result{stdout: string(out), stderr: stderr.String(), code: code}, "mount --kernel needs root")
	if !strings.Contains(stderr.String(), "mount without --kernel") {
		t.Errorf("the refusal does not point to the FUSE mount: %q", stderr.String())
	}
	if mountedAt(t, dir) {
		t.Errorf("%s is mounted after a refused mount --kernel", dir)
	}
	if _, err := os.Stat(filepath.Join(u.home, "store", "meta")); !os.IsNotExist(err) {
		t.Errorf("a refused mount --kernel wrote to the store: %v", err)
	}
}

// TestKernelMountLayerLimit: each layer of a kernel mount's view is a
// data-only layer of its own, so a view of fs.MaxKernelLayers layers
// mounts and shows what its FUSE mount shows, file contents included
// (each file is read through its layer's links), and a view of one more
// is refused before anything is built, pointing to the FUSE mount.
func TestKernelMountLayerLimit(t *testing.T) {
	requireRoot(t)
	var layers []testimage.Layer
	for i := range layerfs.MaxKernelLayers + 1 {
		// Past the inline limit, so each file has a redirect.
		body := strings.Repeat(fmt.Sprintf("layer %d\n", i), 200)
		layers = append(layers, testimage.Layer{Entries: []testimage.Entry{testimage.File(fmt.Sprintf("f%03d", i), body)}})
	}
	img := writeImage(t, testimage.Image{Name: "many", Layers: layers})
	root := t.TempDir()
	importInto(t, root, img)
	stack := make([]string, layerfs.MaxKernelLayers)
	for i := range stack {
		stack[i] = img.layers[i].String()
	}
	below := strings.Join(stack, ",")
	mnt := kernelMount(t, root, below)
	requireSame(t, "mount --kernel of the most layers it takes", walkMount(t, root, below), walk(t, mnt))
	// The kernel takes a mount source of at most 255 bytes: the stack's
	// name is cut short there, and the mount is still listed as a kernel
	// mount of it.
	if out := mustRun(t, root, "mounts", "--no-trunc"); !strings.Contains(out, mnt) || !strings.Contains(out, stack[0]+","+stack[1]+",") || !strings.Contains(out, "...") {
		t.Errorf("layerfs mounts does not list the kernel mount of %d layers at %s by its first layers:\n%s", len(stack), mnt, out)
	}
	for _, i := range []int{0, layerfs.MaxKernelLayers / 2, layerfs.MaxKernelLayers - 1} {
		name := fmt.Sprintf("f%03d", i)
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || string(got) != strings.Repeat(fmt.Sprintf("layer %d\n", i), 200) {
			t.Errorf("%s through mount --kernel: %d bytes, %v", name, len(got), err)
		}
	}

	over := t.TempDir()
	r := run(t, root, "mount", "--kernel", img.ref, over)
	checkRefused(t, r, fmt.Sprintf("has %d layers, more than the %d", layerfs.MaxKernelLayers+1, layerfs.MaxKernelLayers))
	if !strings.Contains(r.stderr, "mount without --kernel") {
		t.Errorf("the refusal does not point to the FUSE mount: %q", r.stderr)
	}
	if mountedAt(t, over) || len(metaFiles(t, root)) != 2 {
		t.Errorf("a refused mount --kernel mounted %s or wrote meta files: %q", over, metaFiles(t, root))
	}
}
