package integration

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// importedDebian imports the Debian image's OCI layout into a new store.
func importedDebian(t *testing.T) (root, manifest string) {
	t.Helper()
	img := debianImage(t)
	root = t.TempDir()
	out := mustRun(t, root, "import", img.Layout)
	fields := strings.Fields(out)
	if len(fields) != 2 || fields[0] != img.Ref {
		t.Fatalf("import printed %q, want %q and a digest", out, img.Ref)
	}
	return root, fields[1]
}

// TestStoreIsAnOCILayout checks that real tools read the store as the
// image layout it claims to be.
func TestStoreIsAnOCILayout(t *testing.T) {
	root, manifest := importedDebian(t)
	img := debianImage(t)
	refs := string(testimage.RunTool(t, "umoci", "ls", "--layout", root))
	if strings.TrimSpace(refs) != img.Ref {
		t.Errorf("umoci ls: %q, want %q", refs, img.Ref)
	}
	var got struct {
		Digest string
		Layers []string
	}
	if err := json.Unmarshal(testimage.RunTool(t, "skopeo", "inspect", "oci:"+root+":"+img.Ref), &got); err != nil {
		t.Fatal(err)
	}
	if got.Digest != manifest || len(got.Layers) != len(img.Layers) {
		t.Errorf("skopeo inspect: digest %s, %d layers; want %s, %d", got.Digest, len(got.Layers), manifest, len(img.Layers))
	}
	for i, l := range img.Layers {
		if got.Layers[i] != l.Digest {
			t.Errorf("layer %d: skopeo says %s, the image has %s", i, got.Layers[i], l.Digest)
		}
	}
	for _, d := range []string{"", "blobs", "layers", "objects", "tmp"} {
		st, err := os.Stat(filepath.Join(root, d))
		if err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("%s/: %v, mode %v; want 0700", d, err, st.Mode().Perm())
		}
	}
}

// TestImportDockerArchive imports skopeo's docker-archive of the same
// image: the layers arrive uncompressed, so their digests differ, but the
// merged view must be the same, entry by entry.
func TestImportDockerArchive(t *testing.T) {
	img := debianImage(t)
	root, _ := importedDebian(t)
	out := mustRun(t, root, "import", img.Archive)
	name := "docker.io/" + img.ArchiveRef
	if !strings.HasPrefix(out, name+" sha256:") {
		t.Fatalf("import of the archive printed %q, want %s and a digest", out, name)
	}
	if r := run(t, root, "verify"); r.code != 0 {
		t.Fatalf("verify after both imports: %s", r.stderr)
	}
	a := walkMount(t, root, img.Ref)
	b := walkMount(t, root, "layerfs-test/debian")
	if diff := oracle.Diff(a, b); len(diff) > 0 {
		t.Fatalf("the archive's view differs from the layout's:\n%s", strings.Join(diff, "\n"))
	}
}

// TestVerifyFindsFlippedBytes damages a blob and an object and expects
// verify to name each, and nothing else.
func TestVerifyFindsFlippedBytes(t *testing.T) {
	root, _ := importedDebian(t)
	if r := run(t, root, "verify"); r.code != 0 {
		t.Fatalf("verify of a fresh import: exit %d: %s", r.code, r.stderr)
	}
	img := debianImage(t)
	blob := filepath.Join(root, "blobs", "sha256", strings.TrimPrefix(img.Layers[1].Digest, "sha256:"))
	flipByte(t, blob, 1000)
	objects, err := filepath.Glob(filepath.Join(root, "objects", "sha256", "*", "*"))
	if err != nil || len(objects) == 0 {
		t.Fatalf("no objects: %v", err)
	}
	object := objects[len(objects)/2]
	flipByte(t, object, 0)
	r := run(t, root, "verify")
	if r.code != 1 {
		t.Fatalf("verify of a damaged store: exit %d, want 1", r.code)
	}
	for _, want := range []string{img.Layers[1].Digest, filepath.Base(object)} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("verify did not name %s:\n%s", want, r.stderr)
		}
	}
	var problems, affected []string
	for _, line := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		if strings.HasSuffix(line, " is affected") {
			affected = append(affected, line)
		} else {
			problems = append(problems, line)
		}
	}
	if len(problems) != 2 {
		t.Errorf("verify named %d problems, want 2:\n%s", len(problems), r.stderr)
	}
	if want := "layerfs: verify: image debian is affected"; len(affected) != 1 || affected[0] != want {
		t.Errorf("verify named affected images %q, want %q", affected, want)
	}
}

func flipByte(t *testing.T, p string, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestGCAfterRm removes one of two images sharing layers: gc frees only
// what the other does not use, and a second gc frees nothing.
func TestGCAfterRm(t *testing.T) {
	root := t.TempDir()
	base := testimage.Layer{Entries: []testimage.Entry{testimage.File("shared", "base bytes")}}
	dir := filepath.Join(t.TempDir(), "layout")
	if _, err := testimage.WriteLayout(dir,
		testimage.Image{Name: "one", Layers: []testimage.Layer{base, {Entries: []testimage.Entry{testimage.File("own", "only one")}}}},
		testimage.Image{Name: "two", Layers: []testimage.Layer{base}},
	); err != nil {
		t.Fatal(err)
	}
	mustRun(t, root, "import", dir)
	mustRun(t, root, "rm", "one")
	out := mustRun(t, root, "gc")
	if !strings.Contains(out, "removed 3 blobs, 1 layers, 1 objects") {
		t.Errorf("gc after rm: %q, want image one's manifest, config and own layer blob, its index and its object", out)
	}
	if out := mustRun(t, root, "gc"); !strings.HasPrefix(out, "removed 0 blobs, 0 layers, 0 objects") {
		t.Errorf("second gc: %q", out)
	}
	if r := run(t, root, "verify"); r.code != 0 {
		t.Fatalf("verify after gc: %s", r.stderr)
	}
	got := walkMount(t, root, "two")
	if got["shared"].SHA256 == "" {
		t.Fatalf("image two lost its file: %v", got)
	}
}

// TestGCDryRunReadOnlyStore runs gc --dry-run through a read-only bind
// mount of a store: it says what gc, run on the writable store, then
// removes, changes nothing, and waits for the writers of the writable
// store as gc does; gc itself is refused there.
func TestGCDryRunReadOnlyStore(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	mustRun(t, root, "rm", "sample")
	ro := t.TempDir()
	must(t, unix.Mount(root, ro, "", unix.MS_BIND, ""))
	t.Cleanup(func() { unix.Unmount(ro, unix.MNT_DETACH) })
	must(t, unix.Mount("", ro, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""))
	if err := os.WriteFile(filepath.Join(ro, "probe"), nil, 0o600); !errors.Is(err, unix.EROFS) {
		t.Fatalf("writing to the read-only bind mount: %v, want EROFS", err)
	}

	// A writer of the writable store holds the gc lock shared.
	lock, err := os.Open(filepath.Join(root, ".gc.lock"))
	must(t, err)
	defer lock.Close()
	must(t, unix.Flock(int(lock.Fd()), unix.LOCK_SH))
	time.AfterFunc(1500*time.Millisecond, func() { unix.Flock(int(lock.Fd()), unix.LOCK_UN) })
	before := storeFiles(t, root)
	r := run(t, ro, "gc", "--dry-run")
	if r.code != 0 || !strings.Contains(r.stderr, "waiting for the commands writing") {
		t.Fatalf("gc --dry-run of a read-only store while a writer runs: exit %d, stderr %q; want it to wait for the writer, then succeed", r.code, r.stderr)
	}
	predicted := gcCounts(t, r.stdout, "would remove")
	if r := run(t, ro, "gc"); r.code != 1 || !strings.Contains(r.stderr, "not writable") {
		t.Errorf("gc of a read-only store: exit %d, stderr %q; want it refused as not writable", r.code, r.stderr)
	}
	if after := storeFiles(t, root); !maps.Equal(after, before) {
		t.Fatalf("gc --dry-run and a refused gc changed the store:\nbefore: %v\nafter: %v", before, after)
	}
	freed := gcCounts(t, mustRun(t, root, "gc"), "removed")
	if freed != predicted || strings.HasPrefix(freed, "0 0 0") {
		t.Errorf("gc freed %s of the removed image, gc --dry-run of the read-only store predicted %s", freed, predicted)
	}
}

// TestRmByDigest removes an unnamed image (<none>, from a layout without
// ref names) by a digest prefix, as docker rmi removes an image by ID,
// and an image of two names only with --force; gc then frees their blobs,
// and skopeo still reads the image left as the OCI layout it is.
func TestRmByDigest(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(t.TempDir(), "layout")
	descs, err := testimage.WriteLayout(dir,
		testimage.Image{Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("unnamed", "no ref name")}}}},
		testimage.Image{Name: "kept", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("kept", "kept")}}}},
		testimage.Image{Name: "two", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("two", "two names")}}}},
	)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRun(t, root, "import", dir); !strings.Contains(got, "<none> "+descs[0].Digest.String()) {
		t.Fatalf("import printed %q, want the unnamed image", got)
	}
	mustRun(t, root, "tag", "two", "other")
	if got := mustRun(t, root, "rm", descs[0].Digest.Encoded()[:12]); got != descs[0].Digest.String()+"\n" {
		t.Errorf("rm of the unnamed image by digest printed %q", got)
	}
	two := descs[2].Digest.String()
	if r := run(t, root, "rm", two); r.code != 1 || !strings.Contains(r.stderr, "several names (other, two)") {
		t.Errorf("rm of a digest two names share: exit %d, %q", r.code, r.stderr)
	}
	if got := mustRun(t, root, "rm", "--force", two); got != "other\ntwo\n" {
		t.Errorf("rm --force of a digest printed %q, want both names", got)
	}
	mustRun(t, root, "gc")
	for _, d := range []ocispec.Descriptor{descs[0], descs[2]} {
		m, _, err := testimage.ReadImage(dir, d)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range append([]ocispec.Descriptor{d, m.Config}, m.Layers...) {
			if _, err := os.Stat(testimage.BlobPath(root, b.Digest)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("blob %s of a removed image is still in the store after gc (%v)", b.Digest, err)
			}
		}
	}
	var inspected struct{ Digest digest.Digest }
	if err := json.Unmarshal(testimage.RunTool(t, "skopeo", "inspect", "oci:"+root+":kept"), &inspected); err != nil || inspected.Digest != descs[1].Digest {
		t.Errorf("skopeo inspect of the image left: %v, %v; want %s", inspected.Digest, err, descs[1].Digest)
	}
}

// TestGCWhileExporting removes an image and runs gc while an export of
// it, or a cat of its files, waits for its reader between two files: rm
// is not refused, gc keeps what the command has still to read, the
// command ends whole, and the next gc frees the image.
func TestGCWhileExporting(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(t.TempDir(), "layout")
	// Past the command's buffer and the pipe's: it waits in it.
	big := strings.Repeat("big bytes\n", 1<<20)
	if _, err := testimage.WriteLayout(dir, testimage.Image{Name: "img", Layers: []testimage.Layer{{Entries: []testimage.Entry{
		testimage.File("a-big", big), testimage.File("b-after", "read after gc\n"),
	}}}}); err != nil {
		t.Fatal(err)
	}
	untar := func(out []byte) string {
		tr := tar.NewReader(bytes.NewReader(out))
		files := map[string]string{}
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			must(t, err)
			body, err := io.ReadAll(tr)
			must(t, err)
			files[h.Name] = string(body)
		}
		return files["a-big"] + files["b-after"]
	}
	for _, c := range []struct {
		args     []string
		contents func([]byte) string
	}{
		{[]string{"export", "img"}, untar},
		{[]string{"cat", "img", "a-big", "b-after"}, func(out []byte) string { return string(out) }},
	} {
		mustRun(t, root, "import", dir)
		cmd := exec.Command(layerfsBin(t), append([]string{"--root", root}, c.args...)...)
		stdout, err := cmd.StdoutPipe()
		must(t, err)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		must(t, cmd.Start())
		head := make([]byte, 4096)
		if _, err := io.ReadFull(stdout, head); err != nil {
			t.Fatalf("%s's first bytes: %v", c.args[0], err)
		}
		mustRun(t, root, "rm", "img")
		mustRun(t, root, "gc")
		rest, err := io.ReadAll(stdout)
		must(t, err)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%s with rm and gc meanwhile: %v\n%s", c.args[0], err, stderr.String())
		}
		if got := c.contents(append(head, rest...)); got != big+"read after gc\n" {
			t.Errorf("%s with gc meanwhile: %d bytes of a-big and b-after; want both whole", c.args[0], len(got))
		}
		if out := mustRun(t, root, "gc"); !strings.Contains(out, "2 objects") {
			t.Errorf("gc after the %s: %q; want the image's 2 objects freed", c.args[0], out)
		}
	}
}

// TestGCReportsWhatItCannotRemove makes one unused object immutable
// (chattr +i, so that even root's unlink fails): gc removes everything
// else but the layer whose links name that object too, says what it
// removed, names the object, and exits 1; once the object can go, a
// second gc removes it and its layer.
func TestGCReportsWhatItCannotRemove(t *testing.T) {
	requireRoot(t)
	testimage.RequireTool(t, "chattr")
	root := sampleStore(t)
	objects, err := filepath.Glob(filepath.Join(root, "objects", "sha256", "*", "*"))
	if err != nil || len(objects) < 2 {
		t.Fatalf("objects of the sample: %v %v", objects, err)
	}
	stuck := objects[0]
	testimage.RunTool(t, "chattr", "+i", stuck)
	t.Cleanup(func() { exec.Command("chattr", "-i", stuck).Run() })
	mustRun(t, root, "rm", "sample")
	r := run(t, root, "gc")
	if r.code != 1 || !strings.Contains(r.stderr, filepath.Base(stuck)) || !strings.Contains(r.stderr, "operation not permitted") {
		t.Errorf("gc with an object it cannot remove: exit %d, stderr %q; want 1, naming it", r.code, r.stderr)
	}
	if want := fmt.Sprintf("removed 5 blobs, 2 layers, %d objects", len(objects)-1); !strings.HasPrefix(r.stdout, want) {
		t.Errorf("gc said %q, want %q", r.stdout, want)
	}
	testimage.RunTool(t, "chattr", "-i", stuck)
	if out := mustRun(t, root, "gc"); !strings.HasPrefix(out, "removed 0 blobs, 1 layers, 1 objects") {
		t.Errorf("gc once the object can go: %q", out)
	}
}

// TestTag names images again and checks each name against the layout's
// own manifest digests: a name in use is refused unless --force moves it,
// a docker-style short name that would shadow a stored full one counts as
// in use, and an image keeps its data through gc while any name is left.
func TestTag(t *testing.T) {
	root := t.TempDir()
	base := testimage.Layer{Entries: []testimage.Entry{testimage.File("shared", "base bytes")}}
	dir := filepath.Join(t.TempDir(), "layout")
	descs, err := testimage.WriteLayout(dir,
		testimage.Image{Name: "one", Layers: []testimage.Layer{base, {Entries: []testimage.Entry{testimage.File("own", "only one")}}}},
		testimage.Image{Name: "two", Layers: []testimage.Layer{base}},
	)
	if err != nil {
		t.Fatal(err)
	}
	one, two := descs[0].Digest, descs[1].Digest
	mustRun(t, root, "import", dir)
	names := func() map[string]string {
		t.Helper()
		var images []struct{ Name, Digest string }
		if err := json.Unmarshal([]byte(mustRun(t, root, "images", "--format", "json")), &images); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, img := range images {
			got[img.Name] = img.Digest
		}
		return got
	}
	check := func(what string, want map[string]string) {
		t.Helper()
		if got := names(); !maps.Equal(got, want) {
			t.Errorf("%s: images %v, want %v", what, got, want)
		}
	}

	if out := mustRun(t, root, "tag", "one", "alias", "docker.io/library/web:latest"); out != "alias "+one.String()+"\ndocker.io/library/web:latest "+one.String()+"\n" {
		t.Errorf("tag one alias web: %q", out)
	}
	check("after tag", map[string]string{"one": one.String(), "two": two.String(), "alias": one.String(), "docker.io/library/web:latest": one.String()})
	if out := mustRun(t, root, "ls", "alias"); out != "own\nshared\n" {
		t.Errorf("ls alias: %q, want image one's files", out)
	}
	mustRun(t, root, "tag", "one", "alias") // the same image again: nothing to move

	for _, name := range []string{"alias", "web"} {
		// A free name given with it is not given either: all or none.
		r := run(t, root, "tag", "two", "free", name)
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "already names another image, "+one.String()) || !strings.Contains(r.stderr, "--force") {
			t.Errorf("tag two free %s over image one's name: exit %d, stdout %q, stderr %q; want exit 1 naming the image and --force", name, r.code, r.stdout, r.stderr)
		}
	}
	check("after refusals", map[string]string{"one": one.String(), "two": two.String(), "alias": one.String(), "docker.io/library/web:latest": one.String()})

	mustRun(t, root, "tag", "--force", two.Encoded()[:12], "alias")
	check("after --force", map[string]string{"one": one.String(), "two": two.String(), "alias": two.String(), "docker.io/library/web:latest": one.String()})
	if out := mustRun(t, root, "ls", "alias"); out != "shared\n" {
		t.Errorf("ls alias after --force: %q, want image two's files", out)
	}

	// Image one keeps its data under its other name.
	mustRun(t, root, "rm", "one")
	if out := mustRun(t, root, "gc"); !strings.HasPrefix(out, "removed 0 blobs, 0 layers, 0 objects") {
		t.Errorf("gc with image one still named web: %q", out)
	}
	if out := mustRun(t, root, "ls", "web"); out != "own\nshared\n" {
		t.Errorf("ls web after rm one and gc: %q", out)
	}
	if r := run(t, root, "verify"); r.code != 0 {
		t.Errorf("verify: %s", r.stderr)
	}

	data, err := os.ReadFile(testimage.BlobPath(dir, two))
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"tag", "tow", "x"}, 1, `did you mean "two"?`},
		{[]string{"tag", m.Layers[0].Digest.String(), "x"}, 1, "is a layer, not an image"},
		{[]string{"tag", "two", ""}, 2, "may not be empty"},
		{[]string{"tag", "two", "my image"}, 2, `image name "my image" is not an OCI ref name`},
		{[]string{"tag", "two", "sha256:0123456789ab"}, 2, "reads as a digest"},
		// Every name is checked before any is given.
		{[]string{"tag", "two", "fine", "sha256:0123456789ab"}, 2, "reads as a digest"},
		{[]string{"tag", "two", "fine", "0123456789abcdef"}, 2, "reads as a digest"},
		{[]string{"tag", "two", "fine", "my image"}, 2, "is not an OCI ref name"},
		{[]string{"tag", "two"}, 2, "requires at least 2 arg"},
	} {
		r := run(t, root, c.args...)
		if r.code != c.code || r.stdout != "" || !strings.Contains(r.stderr, c.want) {
			t.Errorf("layerfs %q: exit %d, stdout %q, stderr %q; want exit %d and %q", c.args, r.code, r.stdout, r.stderr, c.code, c.want)
		}
	}
	// skopeo refuses the name with whitespace as an OCI ref name too.
	if out, err := exec.Command(testimage.RequireTool(t, "skopeo"), "--insecure-policy", "copy", "--quiet", "oci:"+dir+":two", "oci:"+t.TempDir()+":my image").CombinedOutput(); err == nil || !strings.Contains(string(out), "Invalid image my image") {
		t.Errorf("skopeo took %q as a ref name, which tag refuses (%v): %s", "my image", err, out)
	}
	check("after the refusals", map[string]string{"two": two.String(), "alias": two.String(), "docker.io/library/web:latest": one.String()})
}

// TestTagTakesTheNamesUmociTakes gives the sample names that umoci tag
// takes or refuses in a copy of its layout (umoci holds names to the OCI
// ref name grammar): layerfs tag must take the same ones, and refuse the
// others as a usage error (exit 2) naming the name, storing nothing. A
// name it takes is one field of the images table.
func TestTagTakesTheNamesUmociTakes(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := sampleImage(t)
	importInto(t, root, img)
	layout := copyTree(t, img.layout)
	for _, name := range []string{
		"alias", "Mixed:Case", "a--b", "host:5000/team/app:v1", "a_b", "a.b+c",
		"bad name", "tab\tname", "a---b", "a/-x", "x-", "a//b", "a/", "a__b", "a..b", "a~b", "é",
	} {
		umoci := exec.Command(testimage.RequireTool(t, "umoci"), "tag", "--image", layout+":"+img.ref, name)
		umociErr := umoci.Run()
		r := run(t, root, "tag", img.ref, name)
		switch {
		case umociErr == nil && r.code != 0:
			t.Errorf("layerfs tag sample %q: exit %d, stderr %q; umoci tag takes it", name, r.code, r.stderr)
		case umociErr != nil && (r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, "not an OCI ref name")):
			t.Errorf("layerfs tag sample %q: exit %d, stdout %q, stderr %q; umoci tag refuses it (%v)", name, r.code, r.stdout, r.stderr, umociErr)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(mustRun(t, root, "images")), "\n") {
		if f := strings.Fields(line); len(f) != 6 {
			t.Errorf("images row %q has %d fields, want 6", line, len(f))
		}
	}
}

// TestSkopeoCopiesOutOfTheStore reads the store as the OCI layout it is
// with skopeo: an image pulled (a manifest and a two-platform index, of
// which one platform was pulled) and one imported from a docker-archive
// (whose manifest the import wrote) are inspected under their names with
// the digests images lists, and skopeo copy of each to a new layout
// imports again to the same view.
func TestSkopeoCopiesOutOfTheStore(t *testing.T) {
	requireRoot(t)
	testimage.RequireTool(t, "skopeo")
	reg := startRegistry(t, registryOptions{})
	sample := sampleImage(t)
	single := reg.host + "/layerfs/sample:1"
	push(t, sample.layout, sample.ref, single)
	multi := filepath.Join(t.TempDir(), "multi")
	if _, err := testimage.WriteIndexImage(multi, "multi",
		testimage.Image{Arch: "amd64", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("amd", "amd\n")}}}},
		testimage.Image{Arch: "arm64", Variant: "v8", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("arm", "arm\n")}}}}); err != nil {
		t.Fatal(err)
	}
	index := reg.host + "/layerfs/multi:1"
	push(t, multi, "multi", index, "--all")
	archive := filepath.Join(t.TempDir(), "sample.tar")
	testimage.RunTool(t, "skopeo", "--insecure-policy", "copy", "--quiet", "oci:"+sample.layout+":"+sample.ref, "docker-archive:"+archive+":example/sample:1")

	root := t.TempDir()
	mustRun(t, root, "pull", "--quiet", "--platform", "linux/amd64", single, index)
	mustRun(t, root, "import", archive)
	for _, name := range []string{single, index, "docker.io/example/sample:1"} {
		t.Run(name, func(t *testing.T) {
			var si struct{ Digest string }
			must(t, json.Unmarshal(testimage.RunTool(t, "skopeo", "--override-arch", "amd64", "inspect", "oci:"+root+":"+name), &si))
			if want := strings.TrimSpace(mustRun(t, root, "images", "--no-trunc", "--format", "{{.Digest}}", name)); si.Digest != want {
				t.Errorf("skopeo inspect gives %s, images %s", si.Digest, want)
			}
			out := filepath.Join(t.TempDir(), "out")
			testimage.RunTool(t, "skopeo", "--insecure-policy", "--override-arch", "amd64", "copy", "--quiet", "oci:"+root+":"+name, "oci:"+out+":copied")
			again := t.TempDir()
			mustRun(t, again, "import", out)
			requireSame(t, "skopeo's copy out of the store, imported again", walkMount(t, root, name), walkMount(t, again, "copied"))
		})
	}
}
