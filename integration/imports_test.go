package integration

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content/oci"
)

// sharedBase is the layer the two images of these tests share.
var sharedBase = testimage.Layer{Entries: []testimage.Entry{
	testimage.Dir("etc", 0o755),
	testimage.File("etc/os-release", "ID=layerfs-test\n"),
	testimage.Dir("usr", 0o755),
	testimage.File("usr/shared", "in both images\n"),
}}

// twoImages are two images over sharedBase, each with a layer of its own
// that changes and deletes something of the base.
func twoImages(osArch ...string) (a, b testimage.Image) {
	a = testimage.Image{Name: "a", Layers: []testimage.Layer{sharedBase, {Entries: []testimage.Entry{
		testimage.File("etc/os-release", "ID=a\n"),
		testimage.File("only-a", "a\n"),
	}}}}
	b = testimage.Image{Name: "b", Layers: []testimage.Layer{sharedBase, {Entries: []testimage.Entry{
		testimage.Whiteout("usr", "shared"),
		testimage.File("only-b", "b\n"),
	}}}}
	if len(osArch) == 2 {
		b.Arch, b.Variant = osArch[0], osArch[1]
	}
	return a, b
}

// layoutWith writes images into a new OCI layout and returns it with the
// descriptors index.json lists.
func layoutWith(t *testing.T, images ...testimage.Image) (string, []ocispec.Descriptor) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	descs, err := testimage.WriteLayout(dir, images...)
	if err != nil {
		t.Fatal(err)
	}
	return dir, descs
}

// layerBlobs are the paths of a layout image's layer blobs, lowest first.
func layerBlobs(t *testing.T, dir string, desc ocispec.Descriptor) []string {
	t.Helper()
	m, _, err := testimage.ReadImage(dir, desc)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range m.Layers {
		out = append(out, testimage.BlobPath(dir, l.Digest))
	}
	return out
}

// requireView mounts target of store root and compares it with kernel
// overlayfs over blobs.
func requireView(t *testing.T, root string, blobs []string, target ...string) {
	t.Helper()
	requireSame(t, "layerfs mount "+strings.Join(target, " "), oracleTree(t, blobs), walkMount(t, root, target...))
}

// requireVerifies runs layerfs verify on root.
func requireVerifies(t *testing.T, root string) {
	t.Helper()
	if r := run(t, root, "verify"); r.code != 0 {
		t.Errorf("verify: exit %d: %s", r.code, r.stderr)
	}
}

// requireRefused runs an import that must fail with exit 1 naming want,
// and leave the store verifying.
func requireRefused(t *testing.T, root, want string, args ...string) {
	t.Helper()
	r := run(t, root, append([]string{"import"}, args...)...)
	if r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("import %s: exit %d, stderr %q; want exit 1 and %q", strings.Join(args, " "), r.code, r.stderr, want)
	}
	requireVerifies(t, root)
}

// importedNames are the names an import printed, one per line.
func importedNames(out string) []string {
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			names = append(names, f[0])
		}
	}
	slices.Sort(names)
	return names
}

// multiImageArchive makes a docker-archive holding both images, the way
// docker save writes one: skopeo copies each image to a docker-archive,
// and the two are merged into one tar whose second image names its
// layers through the <id>/layer.tar symlinks skopeo wrote, so the layer
// the images share is read through a symlink.
func multiImageArchive(t *testing.T, layout string) string {
	t.Helper()
	testimage.RequireTool(t, "skopeo")
	work := t.TempDir()
	merged := filepath.Join(work, "merged")
	if err := os.Mkdir(merged, 0o755); err != nil {
		t.Fatal(err)
	}
	var all []map[string]any
	for _, name := range []string{"a", "b"} {
		archive := filepath.Join(work, name+".tar")
		testimage.RunTool(t, "skopeo", "copy", "-q", "oci:"+layout+":"+name, "docker-archive:"+archive+":example/"+name+":1")
		testimage.RunTool(t, "tar", "-C", merged, "-xf", archive)
		var entries []map[string]any
		data, err := os.ReadFile(filepath.Join(merged, "manifest.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, &entries); err != nil || len(entries) != 1 {
			t.Fatalf("skopeo's manifest.json %s: %v", data, err)
		}
		all = append(all, entries[0])
	}
	links := map[string]string{}
	symlinks, _ := filepath.Glob(filepath.Join(merged, "*", "layer.tar"))
	for _, l := range symlinks {
		target, err := os.Readlink(l)
		if err != nil {
			t.Fatalf("skopeo's %s is not a symlink: %v", l, err)
		}
		rel, _ := filepath.Rel(merged, l)
		links[filepath.Base(target)] = rel
	}
	second := all[1]["Layers"].([]any)
	for i, l := range second {
		rel, ok := links[l.(string)]
		if !ok {
			t.Fatalf("no <id>/layer.tar symlink to %s in skopeo's archive", l)
		}
		second[i] = rel
	}
	data, _ := json.Marshal(all)
	if err := os.WriteFile(filepath.Join(merged, "manifest.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(work, "both.tar")
	testimage.RunTool(t, "tar", "-C", merged, "-cf", archive, ".")
	return archive
}

// compressed runs archive through tool (gzip, xz, zstd) into a new file.
func compressed(t *testing.T, archive, tool string) string {
	t.Helper()
	testimage.RequireTool(t, tool)
	out := archive + "." + tool
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stderr strings.Builder
	cmd := exec.Command(tool, "-c", archive)
	cmd.Stdout, cmd.Stderr = f, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v %s", tool, err, stderr.String())
	}
	return out
}

// TestImportCompressedMultiImageArchive imports a docker-archive of two
// images sharing a layer through a symlinked layer.tar, plain and piped
// through gzip, xz and zstd; each view is compared with overlayfs.
func TestImportCompressedMultiImageArchive(t *testing.T) {
	requireRoot(t)
	a, b := twoImages()
	layout, descs := layoutWith(t, a, b)
	archive := multiImageArchive(t, layout)
	for _, tool := range []string{"", "gzip", "xz", "zstd"} {
		t.Run("compression="+tool, func(t *testing.T) {
			src := archive
			if tool != "" {
				src = compressed(t, archive, tool)
			}
			root := t.TempDir()
			out := mustRun(t, root, "import", src)
			want := []string{"docker.io/example/a:1", "docker.io/example/b:1"}
			if got := importedNames(out); !slices.Equal(got, want) {
				t.Fatalf("import printed %q, want %v", out, want)
			}
			requireVerifies(t, root)
			requireView(t, root, layerBlobs(t, layout, descs[0]), "example/a:1")
			requireView(t, root, layerBlobs(t, layout, descs[1]), "example/b:1")
		})
	}
}

// TestImportArchiveRef imports one image of a multi-image docker-archive
// and of a layout, by PATH:REF, also from a path holding colons.
func TestImportArchiveRef(t *testing.T) {
	requireRoot(t)
	a, b := twoImages()
	layout, descs := layoutWith(t, a, b)
	archive := multiImageArchive(t, layout)
	colons := filepath.Join(t.TempDir(), "my:layout:dir")
	testimage.RunTool(t, "cp", "-a", layout, colons)
	for _, c := range []struct {
		arg, want string
		desc      ocispec.Descriptor
	}{
		{archive + ":example/b:1", "docker.io/example/b:1", descs[1]},
		{archive + ":@0", "docker.io/example/a:1", descs[0]},
		{layout + ":b", "b", descs[1]},
		{layout + ":@1", "b", descs[1]},
		{colons + ":a", "a", descs[0]},
	} {
		t.Run(filepath.Base(c.arg), func(t *testing.T) {
			root := t.TempDir()
			if got := importedNames(mustRun(t, root, "import", c.arg)); !slices.Equal(got, []string{c.want}) {
				t.Fatalf("imported %v, want only %s", got, c.want)
			}
			requireView(t, root, layerBlobs(t, layout, c.desc), c.want)
		})
	}
	root := t.TempDir()
	if got := importedNames(mustRun(t, root, "import", colons)); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("import of a path with colons imported %v, want a and b", got)
	}
	requireRefused(t, root, `no image "c" in index.json (has a, b)`, layout+":c")
	requireRefused(t, root, "no entry @2 in index.json (it lists 2, from @0)", layout+":@2")

	// images takes names as docker images does: a repository without a
	// tag lists every tag of it.
	both := t.TempDir()
	mustRun(t, both, "import", archive)
	for filter, want := range map[string]string{
		"example/a":             "docker.io/example/a:1\n",
		"docker.io/example/b:1": "docker.io/example/b:1\n",
		"example/a:2":           "",
	} {
		if got := mustRun(t, both, "images", "--format", "{{.Name}}", filter); got != want {
			t.Errorf("images %s: %q, want %q", filter, got, want)
		}
	}
	requireRefused(t, root, `no image "example/c:1" in manifest.json (has docker.io/example/a:1, docker.io/example/b:1)`, archive+":example/c:1")
}

// TestSkopeoTransportArguments imports and pulls by the arguments skopeo
// takes (oci:DIR:REF, oci-archive:, docker-archive:, docker://), each
// image by the digest skopeo inspect gives for the same argument, and
// refuses an argument of the other command's kind, naming that command.
func TestSkopeoTransportArguments(t *testing.T) {
	requireRoot(t)
	a, b := twoImages()
	layout, descs := layoutWith(t, a, b)
	dir := t.TempDir()
	reg := startRegistry(t, registryOptions{})
	copyTo := func(dest string) {
		testimage.RunTool(t, "skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "oci:"+layout+":a", dest)
	}
	ociArchive := "oci-archive:" + filepath.Join(dir, "a-oci.tar") + ":a"
	dockerArchive := "docker-archive:" + filepath.Join(dir, "a-docker.tar") + ":example/a:1"
	remote := "docker://" + reg.host + "/layerfs/a:1"
	for _, dest := range []string{ociArchive, dockerArchive, remote} {
		copyTo(dest)
	}
	inspect := func(arg string) digest.Digest {
		var out struct{ Digest digest.Digest }
		if err := json.Unmarshal(testimage.RunTool(t, "skopeo", "inspect", "--tls-verify=false", arg), &out); err != nil {
			t.Fatal(err)
		}
		return out.Digest
	}
	for _, c := range []struct {
		cmd, arg, name string
		digest         digest.Digest // "" where skopeo makes a manifest of its own
	}{
		{"import", "oci:" + layout + ":a", "a", inspect("oci:" + layout + ":a")},
		{"import", ociArchive, "a", inspect(ociArchive)},
		{"import", dockerArchive, "docker.io/example/a:1", ""},
		{"pull", remote, reg.host + "/layerfs/a:1", inspect(remote)},
	} {
		t.Run(c.cmd+" "+strings.SplitN(c.arg, ":", 2)[0], func(t *testing.T) {
			root := t.TempDir()
			out := mustRun(t, root, c.cmd, c.arg)
			if got := importedNames(out); !slices.Equal(got, []string{c.name}) {
				t.Fatalf("%s %s printed %q, want the name %s", c.cmd, c.arg, out, c.name)
			}
			if c.digest != "" {
				pulledAs(t, out, c.name, c.digest)
			}
			requireView(t, root, layerBlobs(t, layout, descs[0]), c.name)
		})
	}
	root := t.TempDir()
	requireRefused(t, root, "layerfs pull", remote)
	if r := run(t, root, "pull", "oci:"+layout+":a"); r.code != 1 || !strings.Contains(r.stderr, "layerfs import") {
		t.Errorf("pull of a layout: exit %d, stderr %q; want exit 1 naming layerfs import", r.code, r.stderr)
	}

	// skopeo's dir: transport writes one image's manifest.json (an
	// object, where a docker-archive's is a list) beside its blobs, plain
	// and zstd alike: refused, given with the transport or as a path,
	// naming the skopeo copy that makes of it an archive import reads;
	// that archive then imports.
	for _, compress := range []string{"", "zstd"} {
		skopeoDir := filepath.Join(dir, "a-dir-"+compress)
		args := []string{"--insecure-policy", "copy", "--quiet"}
		if compress != "" {
			args = append(args, "--dest-compress-format", compress)
		}
		testimage.RunTool(t, "skopeo", append(args, "oci:"+layout+":a", "dir:"+skopeoDir)...)
		requireRefused(t, root, "skopeo's dir: transport is not one import reads", "dir:"+skopeoDir)
		requireRefused(t, root, "skopeo copy dir:"+skopeoDir+" oci-archive:FILE makes an archive layerfs import reads", "dir:"+skopeoDir)
		requireRefused(t, root, "import "+skopeoDir+": a directory of skopeo's dir: transport", skopeoDir)
		requireRefused(t, root, "skopeo copy dir:"+skopeoDir+" oci-archive:FILE makes an archive layerfs import reads", skopeoDir)
		converted := filepath.Join(dir, "from-dir-"+compress+".tar")
		testimage.RunTool(t, "skopeo", "--insecure-policy", "copy", "--quiet", "dir:"+skopeoDir, "oci-archive:"+converted+":a")
		fresh := t.TempDir()
		mustRun(t, fresh, "import", converted)
		requireView(t, fresh, layerBlobs(t, layout, descs[0]), "a")
	}
	// pull refuses them too, before it asks any registry: dir:/PATH is
	// no registry "dir:".
	for _, arg := range []string{"dir:" + filepath.Join(dir, "a-dir-"), "docker-daemon:example/a:1"} {
		if r := run(t, root, "pull", arg); r.code != 1 || !strings.Contains(r.stderr, "transport, not a registry's image") || strings.Contains(r.stderr, "docker://") {
			t.Errorf("pull %s: exit %d, stderr %q; want a refusal naming the transport", arg, r.code, r.stderr)
		}
	}
	if r := run(t, root, "pull", "dir:latest"); r.code != 1 || !strings.Contains(r.stderr, "pull docker://dir:latest for a registry's image of that name") {
		t.Errorf("pull dir:latest: exit %d, stderr %q; want a refusal naming docker:// for the registry's dir:latest", r.code, r.stderr)
	}
	// Transports naming no file say what reads their images.
	requireRefused(t, root, "docker save example/a:1 | layerfs import -", "docker-daemon:example/a:1")
	requireRefused(t, root, "podman save example/a:1 | layerfs import -", "containers-storage:example/a:1")
	requireRefused(t, root, "layerfs import --layer "+filepath.Join(dir, "fs.tar")+" stores a filesystem tar as one layer", "tarball:"+filepath.Join(dir, "fs.tar"))
}

// TestImportTruncatedArchive cuts a skopeo-written docker-archive, plain
// and gzipped, inside its layer: the import fails naming the member GNU
// tar was reading when it met the end, and leaves the store as it was.
func TestImportTruncatedArchive(t *testing.T) {
	img := randomImage(t, "big", 1<<20)
	archive := filepath.Join(t.TempDir(), "big.tar")
	testimage.RunTool(t, "skopeo", "copy", "-q", "oci:"+img.layout+":"+img.ref, "docker-archive:"+archive+":example/big:1")
	for _, tool := range []string{"", "gzip"} {
		t.Run("compression="+tool, func(t *testing.T) {
			src := archive
			if tool != "" {
				src = compressed(t, archive, tool)
			}
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			cut := filepath.Join(t.TempDir(), filepath.Base(src))
			if err := os.WriteFile(cut, data[:len(data)*6/10], 0o644); err != nil {
				t.Fatal(err)
			}
			listed, err := exec.Command("tar", "-tf", cut).Output()
			if err == nil {
				t.Fatalf("GNU tar read the cut archive whole:\n%s", listed)
			}
			names := strings.Fields(string(listed))
			if len(names) == 0 {
				t.Fatal("GNU tar listed no member of the cut archive")
			}
			root := t.TempDir()
			want := fmt.Sprintf("truncated: the archive ends inside member %q", names[len(names)-1])
			requireRefused(t, root, want, cut)
			if tmp := tmpFiles(t, root); len(tmp) != 0 {
				t.Errorf("a refused import left %v in tmp/", tmp)
			}
		})
	}
}

// TestImportLayerListedTwice imports an image listing one layer twice,
// whose view is kernel overlayfs's over the layers as listed; with that
// layer's blob swapped for another's, the import is refused as skopeo
// refuses to copy it, naming the layer once, and stores nothing of it.
func TestImportLayerListedTwice(t *testing.T) {
	requireRoot(t)
	a := testimage.Layer{Entries: []testimage.Entry{testimage.File("a", "first\n")}}
	b := testimage.Layer{Entries: []testimage.Entry{testimage.File("a", "second\n"), testimage.File("b", "b\n")}}
	layout, descs := layoutWith(t, testimage.Image{Name: "twice", Layers: []testimage.Layer{a, b, a}})
	blobs := layerBlobs(t, layout, descs[0])
	if blobs[0] != blobs[2] {
		t.Fatalf("the layer listed twice has two blobs: %v", blobs)
	}
	root := t.TempDir()
	mustRun(t, root, "import", layout)
	requireView(t, root, blobs, "twice")

	other, err := os.ReadFile(blobs[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blobs[0], other, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("skopeo", "--insecure-policy", "copy", "oci:"+layout+":twice", "oci:"+t.TempDir()+":x").CombinedOutput(); err == nil || !strings.Contains(string(out), "Digest did not match") {
		t.Errorf("skopeo copied the image with a wrong blob (%v): %s", err, out)
	}
	bad, bad0 := t.TempDir(), filepath.Base(blobs[0])
	r := run(t, bad, "import", layout)
	if r.code != 1 || strings.Count(r.stderr, "layer sha256:"+bad0) != 1 {
		t.Errorf("import with a wrong blob listed twice: exit %d, stderr %q; want exit 1 and the layer named once", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(bad, "layers", "sha256", bad0, "index")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the wrong layer is in the store (%v)", err)
	}
	requireVerifies(t, bad)
}

// packArtifacts writes, with oras-go, an OCI 1.1 artifact tagged
// "artifact" and a signature-like referrer of subject into layout dir.
func packArtifacts(t *testing.T, dir string, subject ocispec.Descriptor) (artifact, referrer ocispec.Descriptor) {
	t.Helper()
	ctx := context.Background()
	store, err := oci.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	blob := pushBytes(t, store, "application/vnd.example.data+json", `{"hello":"artifact"}`)
	artifact, err = oras.PackManifest(ctx, store, oras.PackManifestVersion1_1, "application/vnd.example+json", oras.PackManifestOptions{Layers: []ocispec.Descriptor{blob}})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Tag(ctx, artifact, "artifact"); err != nil {
		t.Fatal(err)
	}
	subject = ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	referrer, err = oras.PackManifest(ctx, store, oras.PackManifestVersion1_1, "application/vnd.dev.cosign.artifact.sig.v1+json",
		oras.PackManifestOptions{Subject: &subject, Layers: []ocispec.Descriptor{blob}})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Tag(ctx, referrer, "signature"); err != nil {
		t.Fatal(err)
	}
	return artifact, referrer
}

// TestImportLayoutWithArtifacts imports a layout holding an image, an
// artifact and a referrer of the image: the image is imported and the
// two others skipped, one stderr line each.
func TestImportLayoutWithArtifacts(t *testing.T) {
	requireRoot(t)
	a, _ := twoImages()
	layout, descs := layoutWith(t, a)
	artifact, referrer := packArtifacts(t, layout, descs[0])
	root := t.TempDir()
	r := run(t, root, "import", layout)
	if r.code != 0 {
		t.Fatalf("import: exit %d: %s", r.code, r.stderr)
	}
	if got := importedNames(r.stdout); !slices.Equal(got, []string{"a"}) {
		t.Errorf("imported %v, want a", got)
	}
	for _, want := range []string{
		fmt.Sprintf("skipped %s (application/vnd.example+json artifact)", artifact.Digest),
		fmt.Sprintf("skipped %s (application/vnd.dev.cosign.artifact.sig.v1+json artifact, referrer of %s)", referrer.Digest, descs[0].Digest),
	} {
		if !strings.Contains(r.stderr, want+"\n") {
			t.Errorf("stderr %q lacks %q", r.stderr, want)
		}
	}
	if n := strings.Count(r.stderr, "skipped "); n != 2 {
		t.Errorf("%d skipped lines, want 2: %s", n, r.stderr)
	}
	// Said to a person, as progress is: --log-level error silences it.
	if r := run(t, t.TempDir(), "--log-level", "error", "import", layout); r.code != 0 || r.stderr != "" {
		t.Errorf("import --log-level error: exit %d, stderr %q; want 0 and nothing", r.code, r.stderr)
	}
	requireVerifies(t, root)
	requireView(t, root, layerBlobs(t, layout, descs[0]), "a")
	requireRefused(t, root, "no image to import", layout+":artifact")
}

// multiPlatformLayout writes an index named "multi" of a linux/amd64 and
// a linux/arm64/v8 image, plus a buildkit-style attestation manifest
// (unknown/unknown) written with oras-go. It returns the layout, the two
// images' descriptors and the attestation's.
func multiPlatformLayout(t *testing.T) (string, []ocispec.Descriptor, ocispec.Descriptor) {
	t.Helper()
	amd, arm := twoImages("arm64", "v8")
	dir, descs := layoutWith(t, amd, arm)
	ctx := context.Background()
	store, err := oci.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	layer := pushBytes(t, store, "application/vnd.in-toto+json", `{"_type":"https://in-toto.io/Statement/v0.1"}`)
	config := pushBytes(t, store, ocispec.MediaTypeImageConfig, `{"architecture":"unknown","os":"unknown","rootfs":{"type":"layers","diff_ids":[]}}`)
	att, err := oras.PackManifest(ctx, store, oras.PackManifestVersion1_1, "", oras.PackManifestOptions{
		Layers: []ocispec.Descriptor{layer}, ConfigDescriptor: &config})
	if err != nil {
		t.Fatal(err)
	}
	att.Platform = &ocispec.Platform{OS: "unknown", Architecture: "unknown"}
	att.Annotations = map[string]string{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": descs[0].Digest.String()}
	att.ArtifactType = ""
	var manifests []ocispec.Descriptor
	for _, d := range descs {
		manifests = append(manifests, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, Platform: d.Platform})
	}
	index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: append(manifests, att)}
	data, _ := json.Marshal(index)
	top := pushBytes(t, store, ocispec.MediaTypeImageIndex, string(data))
	if err := store.Tag(ctx, top, "multi"); err != nil {
		t.Fatal(err)
	}
	// Only the index is named: the single images were the way to write
	// its platforms.
	onlyRef(t, dir, "multi")
	return dir, descs, att
}

// pushBytes stores data in an oras-go layout store as a blob.
func pushBytes(t *testing.T, store *oci.Store, mediaType, data string) ocispec.Descriptor {
	t.Helper()
	d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromString(data), Size: int64(len(data))}
	if err := store.Push(context.Background(), d, strings.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return d
}

// onlyRef keeps, of index.json's entries, the one named ref.
func onlyRef(t *testing.T, dir, ref string) {
	t.Helper()
	idx, err := testimage.ReadIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx.Manifests = slices.DeleteFunc(idx.Manifests, func(d ocispec.Descriptor) bool {
		return d.Annotations[ocispec.AnnotationRefName] != ref
	})
	data, _ := json.Marshal(idx)
	if err := os.WriteFile(filepath.Join(dir, "index.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestImportSeveralPlatformsUnderOneName imports two platforms of an
// index under one name, skipping its attestation, and opens each view.
func TestImportSeveralPlatformsUnderOneName(t *testing.T) {
	requireRoot(t)
	layout, descs, att := multiPlatformLayout(t)
	root := t.TempDir()
	r := run(t, root, "import", layout)
	if r.code != 0 || !strings.Contains(r.stderr, fmt.Sprintf("skipped %s (attestation manifest for %s)\n", att.Digest, descs[0].Digest)) {
		t.Fatalf("import: exit %d, stderr %q: want 0 and the attestation skipped", r.code, r.stderr)
	}
	requireRefused(t, root, "no manifest for platform linux/ppc64le (has linux/amd64, linux/arm64/v8)", "--platform", "linux/ppc64le", layout)
	if r := run(t, root, "ls", "--platform", "linux/arm64", "multi"); r.code == 0 || !strings.Contains(r.stderr, "no platform linux/arm64 (has linux/amd64)") {
		t.Errorf("ls of a platform not imported: exit %d, %q", r.code, r.stderr)
	}
	mustRun(t, root, "import", "--platform", "linux/arm64", layout)
	images := mustRun(t, root, "images")
	if !strings.Contains(images, "linux/amd64,linux/arm64/v8") {
		t.Errorf("images does not list both platforms of multi:\n%s", images)
	}
	requireVerifies(t, root)
	requireView(t, root, layerBlobs(t, layout, descs[0]), "multi")
	requireView(t, root, layerBlobs(t, layout, descs[0]), "--platform", "linux/amd64", "multi")
	requireView(t, root, layerBlobs(t, layout, descs[1]), "--platform", "linux/arm64", "multi")
	requireView(t, root, layerBlobs(t, layout, descs[1]), "--platform", "linux/arm64/v8", "multi")
	// inspect and layers choose the platform as the views do, each
	// giving the manifest the layout holds for it.
	for i, platform := range []string{"linux/amd64", "linux/arm64"} {
		m, _, err := testimage.ReadImage(layout, descs[i])
		if err != nil {
			t.Fatal(err)
		}
		var want strings.Builder
		for _, l := range m.Layers {
			want.WriteString(l.Digest.String() + "\n")
		}
		// The platform's manifest, given by digest, is the index's: it
		// has the index's name.
		if got := mustRun(t, root, "inspect", "--format", "{{.Names}}", descs[i].Digest.String()); got != "[multi]\n" {
			t.Errorf("inspect --format {{.Names}} of the %s manifest: %q, want [multi]", platform, got)
		}
		if got := mustRun(t, root, "layers", "-q", "--no-trunc", "--platform", platform, "multi"); got != want.String() {
			t.Errorf("layers --platform %s multi:\n%swant the layout's manifest's:\n%s", platform, got, want.String())
		}
		var inspected []struct{ ManifestDigest string }
		if err := json.Unmarshal([]byte(mustRun(t, root, "inspect", "--platform", platform, "multi")), &inspected); err != nil {
			t.Fatal(err)
		}
		if len(inspected) != 1 || inspected[0].ManifestDigest != descs[i].Digest.String() {
			t.Errorf("inspect --platform %s multi: %+v, want manifest %s", platform, inspected, descs[i].Digest)
		}
	}
	// The name is right, so no other is suggested for it.
	if r := run(t, root, "ls", "--platform", "linux/arm/v7", "multi"); r.code == 0 || !strings.Contains(r.stderr, "no platform linux/arm/v7 (has linux/amd64, linux/arm64/v8)") || strings.Contains(r.stderr, "did you mean") {
		t.Errorf("ls of a missing platform: exit %d, %q", r.code, r.stderr)
	}
	mustRun(t, root, "rm", "multi")
	mustRun(t, root, "gc")
	if r := run(t, root, "layers"); strings.Count(r.stdout, "sha256:") != 0 {
		t.Errorf("layers left after rm and gc:\n%s", r.stdout)
	}

	all := t.TempDir()
	mustRun(t, all, "import", "--all-platforms", layout)
	requireView(t, all, layerBlobs(t, layout, descs[1]), "--platform", "linux/arm64", "multi")
	requireVerifies(t, all)
}

// TestImportRefusesSelfReferringIndex refuses an index that lists itself
// and a chain of indexes nested too deep, without hanging.
func TestImportRefusesSelfReferringIndex(t *testing.T) {
	requireRoot(t)
	a, _ := twoImages()
	layout, descs := layoutWith(t, a)
	root := t.TempDir()
	mustRun(t, root, "import", layout)

	self := digest.FromString("an index that lists itself")
	data, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageIndex, Digest: self, Size: 1}}})
	if err := os.WriteFile(testimage.BlobPath(layout, self), data, 0o644); err != nil {
		t.Fatal(err)
	}
	setIndex(t, layout, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: self, Size: int64(len(data)),
		Annotations: map[string]string{ocispec.AnnotationRefName: "self"}})
	requireRefused(t, root, fmt.Sprintf("index %s refers to itself", self), layout)

	desc := descs[0]
	for range 12 {
		data, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{desc}})
		desc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(data), Size: int64(len(data))}
		if err := os.WriteFile(testimage.BlobPath(layout, desc.Digest), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	desc.Annotations = map[string]string{ocispec.AnnotationRefName: "deep"}
	setIndex(t, layout, desc)
	requireRefused(t, root, "image indexes nested more than 8 deep", layout)
}

// setIndex makes desc the one entry of layout's index.json.
func setIndex(t *testing.T, layout string, desc ocispec.Descriptor) {
	t.Helper()
	data, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{desc}})
	if err := os.WriteFile(filepath.Join(layout, "index.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestImportRefusesBlobOutOfLayout refuses a layer blob that is a symlink
// to /dev/zero, in a layout directory and in a layout tar, at once.
func TestImportRefusesBlobOutOfLayout(t *testing.T) {
	requireRoot(t)
	a, _ := twoImages()
	layout, descs := layoutWith(t, a)
	blob := layerBlobs(t, layout, descs[0])[1]
	if err := os.Remove(blob); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", blob); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	requireRefused(t, root, `symlink to "/dev/zero" leads out of the directory`, layout)
	archive := filepath.Join(t.TempDir(), "layout.tar.gz")
	testimage.RunTool(t, "tar", "-C", layout, "-czf", archive, ".")
	requireRefused(t, root, `links to "/dev/zero", outside the archive`, archive)
}

// TestImportBareLayerEmpty takes a file as a layer where GNU tar reads
// it as a tar: a 0-byte file is refused naming it, leaving the store
// empty, and a tar of no entries is an empty layer.
func TestImportBareLayerEmpty(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		size int
	}{{"zero-bytes.tar", 0}, {"no-entries.tar", 1024}} {
		file := filepath.Join(dir, c.name)
		must(t, os.WriteFile(file, make([]byte, c.size), 0o644))
		tarReads := exec.Command("tar", "-tf", file).Run() == nil
		root := t.TempDir()
		r := run(t, root, "import", "--layer", file)
		layers := strings.TrimSpace(mustRun(t, root, "layers", "--quiet"))
		var content []string
		for f := range storeFiles(t, root) {
			if dir, _, _ := strings.Cut(f, "/"); dir == "blobs" || dir == "layers" || dir == "objects" {
				content = append(content, f)
			}
		}
		switch {
		case tarReads && (r.code != 0 || layers == ""):
			t.Errorf("import --layer %s, which GNU tar reads: exit %d, stderr %q, layers %q; want it stored", c.name, r.code, r.stderr, layers)
		case !tarReads && (r.code != 1 || !strings.Contains(r.stderr, file+": the file is empty (0 bytes)") || layers != "" || len(content) != 0):
			t.Errorf("import --layer %s, which GNU tar refuses: exit %d, stderr %q, layers %q, stored %q; want it refused naming the file, nothing stored", c.name, r.code, r.stderr, layers, content)
		}
		requireVerifies(t, root)
	}
}

// TestImportBareLayer imports a gzip layer tar with no image around it:
// layers lists it, it mounts by digest as overlayfs shows it, gc keeps it
// until rm forgets it by digest.
func TestImportBareLayer(t *testing.T) {
	requireRoot(t)
	a, _ := twoImages()
	layout, descs := layoutWith(t, a)
	blob := layerBlobs(t, layout, descs[0])[0]
	root := t.TempDir()
	r := run(t, root, "import", "--layer", blob)
	out := strings.TrimSpace(r.stdout)
	if want := "sha256:" + filepath.Base(blob); r.code != 0 || out != want || r.stderr != "" {
		t.Fatalf("import --layer: exit %d, stdout %q, stderr %q; want %s and nothing on stderr", r.code, r.stdout, r.stderr, want)
	}
	// An image archive given as a layer is stored as one, as asked, with
	// a warning that import without --layer takes its images.
	archive := filepath.Join(t.TempDir(), "layout.tar")
	testimage.RunTool(t, "tar", "-C", layout, "-cf", archive, ".")
	if r := run(t, t.TempDir(), "import", "--layer", archive); r.code != 0 || !strings.HasPrefix(r.stdout, "sha256:") || !strings.Contains(r.stderr, "oci-layout at its root") || !strings.Contains(r.stderr, "without --layer") {
		t.Errorf("import --layer of a layout's tar: exit %d, stdout %q, stderr %q; want it stored, with a warning naming oci-layout", r.code, r.stdout, r.stderr)
	}
	mustRun(t, root, "gc")
	if layers := mustRun(t, root, "layers", "--no-trunc"); !strings.Contains(layers, out) {
		t.Errorf("layers does not list %s:\n%s", out, layers)
	}
	requireVerifies(t, root)
	requireView(t, root, []string{blob}, out)

	// rm by digest forgets it, refused while a mount serves it.
	mnt := mountDaemon(t, root, out)
	if r := run(t, root, "rm", out[:7+12]); r.code != 1 || !strings.Contains(r.stderr, "is in use: served at "+mnt) {
		t.Errorf("rm of a mounted bare layer: exit %d, %q; want 1, naming the mount", r.code, r.stderr)
	}
	unmount(t, root, mnt)
	if got := strings.TrimSpace(mustRun(t, root, "rm", out[:7+12])); got != out {
		t.Errorf("rm printed %q, want %s", got, out)
	}
	mustRun(t, root, "gc")
	if layers := mustRun(t, root, "layers", "-q", "--no-trunc"); layers != "" {
		t.Errorf("layers after rm and gc:\n%s", layers)
	}
	if _, err := os.Stat(blob); err != nil {
		t.Errorf("the imported file: %v", err)
	}
	requireVerifies(t, root)

	// A layer of an image is removed with its image, not by digest: the
	// refusal names the image the layout names, and comes first, also
	// while a mount serves the layer.
	mustRun(t, root, "import", layout)
	mountDaemon(t, root, out)
	want := "was not imported on its own (import --layer) but as a layer of " + descs[0].Annotations[ocispec.AnnotationRefName] + "; rm the images that use it"
	if r := run(t, root, "rm", out); r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("rm of an image's layer while mounted: exit %d, %q; want 1 and %q", r.code, r.stderr, want)
	}
}

// TestImportRefusesLegacyArchive names the pre-1.10 docker-archive: one
// directory per layer with json and layer.tar, a repositories file and no
// manifest.json, made here from skopeo's docker-archive (which still
// writes those directories) re-tarred by GNU tar without manifest.json.
func TestImportRefusesLegacyArchive(t *testing.T) {
	requireRoot(t)
	testimage.RequireTool(t, "skopeo")
	a, _ := twoImages()
	layout, _ := layoutWith(t, a)
	work := t.TempDir()
	modern, tree := filepath.Join(work, "modern.tar"), filepath.Join(work, "tree")
	testimage.RunTool(t, "skopeo", "copy", "-q", "oci:"+layout+":a", "docker-archive:"+modern+":example/legacy:1")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	testimage.RunTool(t, "tar", "-C", tree, "-xf", modern)
	legacy := filepath.Join(work, "legacy.tar")
	testimage.RunTool(t, "tar", "-C", tree, "--exclude", "./manifest.json", "-cf", legacy, ".")
	requireRefused(t, t.TempDir(), "legacy docker-archive (before docker 1.10", legacy)
}

// TestImportWarnsOfAnotherPlatform opens a single-platform image built for
// another platform than the one asked: a warning, and the view.
func TestImportWarnsOfAnotherPlatform(t *testing.T) {
	requireRoot(t)
	_, arm := twoImages("arm64", "v8")
	layout, descs := layoutWith(t, arm)
	root := t.TempDir()
	mustRun(t, root, "import", layout)
	warning := "image b is for linux/arm64/v8, not linux/amd64"
	if r := run(t, root, "ls", "--platform", "linux/amd64", "b"); r.code != 0 || !strings.Contains(r.stderr, warning) {
		t.Errorf("ls of an arm64 image as amd64: exit %d, stderr %q; want 0 and %q", r.code, r.stderr, warning)
	}
	if r := run(t, root, "ls", "--platform", "linux/arm64", "b"); r.code != 0 || r.stderr != "" {
		t.Errorf("ls as linux/arm64 of a linux/arm64/v8 image: exit %d, stderr %q; want 0 and no warning", r.code, r.stderr)
	}
	requireView(t, root, layerBlobs(t, layout, descs[0]), "--platform", "linux/arm64", "b")
}

// writeBlob writes data into layout dir as a blob of mediaType.
func writeBlob(t *testing.T, dir, mediaType string, data []byte) ocispec.Descriptor {
	t.Helper()
	d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := os.WriteFile(testimage.BlobPath(dir, d.Digest), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestImportSeekableAndForeignLayers imports an image whose layers are
// a foreign-media-type layer, an eStargz-shaped layer (a table of
// contents after the tar's end, in a gzip member of its own) and a
// zstd:chunked-shaped one (the same in a zstd skippable frame): the view
// is that of the plain layers, as kernel overlayfs shows them.
func TestImportSeekableAndForeignLayers(t *testing.T) {
	requireRoot(t)
	a, _ := twoImages()
	a.Layers = append(a.Layers, testimage.Layer{Entries: []testimage.Entry{testimage.File("third", "3\n")}})
	layout, descs := layoutWith(t, a)
	plain := layerBlobs(t, layout, descs[0])
	m, c, err := testimage.ReadImage(layout, descs[0])
	if err != nil {
		t.Fatal(err)
	}
	toc := []byte(`{"version":1,"entries":[]}`)
	tarOf := func(blob string) []byte {
		f, err := os.Open(blob)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	// Layer 0: a foreign layer's media type over the same bytes.
	m.Layers[0].MediaType = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
	// Layer 1: eStargz's shape.
	tar1 := tarOf(plain[1])
	var gz bytes.Buffer
	for _, part := range [][]byte{append(slices.Clone(tar1), toc...), {}} {
		zw := gzip.NewWriter(&gz)
		zw.Write(part)
		zw.Close()
	}
	m.Layers[1] = writeBlob(t, layout, ocispec.MediaTypeImageLayerGzip, gz.Bytes())
	m.Layers[1].Annotations = map[string]string{"containerd.io/snapshot/stargz/toc.digest": digest.FromBytes(toc).String()}
	c.RootFS.DiffIDs[1] = digest.FromBytes(append(slices.Clone(tar1), toc...))
	// Layer 2: zstd:chunked's shape.
	tar2 := tarOf(plain[2])
	zw, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	frame := zw.EncodeAll(append(slices.Clone(tar2), toc...), nil)
	skippable := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 0x184D2A50), uint32(len(toc)))
	frame = append(frame, append(skippable, toc...)...)
	m.Layers[2] = writeBlob(t, layout, ocispec.MediaTypeImageLayerZstd, frame)
	m.Layers[2].Annotations = map[string]string{"io.github.containers.zstd-chunked.manifest-checksum": digest.FromBytes(toc).String()}
	c.RootFS.DiffIDs[2] = digest.FromBytes(append(slices.Clone(tar2), toc...))

	cdata, _ := json.Marshal(c)
	m.Config = writeBlob(t, layout, ocispec.MediaTypeImageConfig, cdata)
	mdata, _ := json.Marshal(m)
	desc := writeBlob(t, layout, ocispec.MediaTypeImageManifest, mdata)
	desc.Annotations = map[string]string{ocispec.AnnotationRefName: "seekable"}
	setIndex(t, layout, desc)

	root := t.TempDir()
	if got := importedNames(mustRun(t, root, "import", layout)); !slices.Equal(got, []string{"seekable"}) {
		t.Fatalf("imported %v", got)
	}
	requireVerifies(t, root)
	requireView(t, root, plain, "seekable")
}

// TestImportStdin imports a gzipped docker-archive of two images piped to
// "import -", as docker save's output is, and each view is compared with
// overlayfs; what is no archive is refused naming stdin.
func TestImportStdin(t *testing.T) {
	requireRoot(t)
	a, b := twoImages()
	layout, descs := layoutWith(t, a, b)
	archive := compressed(t, multiImageArchive(t, layout), "gzip")
	stdin := func(root, file string) result {
		t.Helper()
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command(layerfsBin(t), "--root", root, "import", "-")
		// A pipe, as from docker save, not the file itself.
		cmd.Stdin = io.MultiReader(f)
		return runCommand(t, commandDeadline, cmd)
	}
	root := t.TempDir()
	r := stdin(root, archive)
	if got, want := importedNames(r.stdout), []string{"docker.io/example/a:1", "docker.io/example/b:1"}; r.code != 0 || !slices.Equal(got, want) {
		t.Fatalf("import - of a piped archive: exit %d, stdout %q, stderr %q; want %v", r.code, r.stdout, r.stderr, want)
	}
	requireVerifies(t, root)
	requireView(t, root, layerBlobs(t, layout, descs[0]), "example/a:1")
	requireView(t, root, layerBlobs(t, layout, descs[1]), "example/b:1")

	empty := filepath.Join(t.TempDir(), "empty")
	must(t, os.WriteFile(empty, nil, 0o644))
	if r := stdin(t.TempDir(), empty); r.code != 1 || !strings.HasPrefix(r.stderr, "layerfs: import stdin: it is empty") {
		t.Errorf("import - of nothing: exit %d, stderr %q; want 1, naming stdin as empty", r.code, r.stderr)
	}
	// As from skopeo 1.9, which cannot write an oci-archive to a pipe:
	// it fails, and nothing comes. Should it write one, that imports.
	script := "skopeo --insecure-policy copy --quiet oci:" + layout + ":a oci-archive:/dev/stdout:a | " + layerfsBin(t) + " --root " + t.TempDir() + " import -; echo \"${PIPESTATUS[*]}\""
	out, _ := exec.Command("bash", "-c", script).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	switch status := lines[len(lines)-1]; {
	case status == "0 0":
	case strings.HasPrefix(status, "0 "):
		t.Errorf("skopeo wrote an oci-archive to a pipe, and import - failed:\n%s", out)
	case !strings.Contains(string(out), "layerfs: import stdin: it is empty"):
		t.Errorf("skopeo failed to write to a pipe, and import - did not say it got nothing:\n%s", out)
	}
}

// TestPlatformChoiceAgreesWithSkopeo chooses a platform of indexes of
// several arm variants as skopeo does (--override-arch and
// --override-variant, whose choice is told by the config it shows): import
// --platform, a view of an index imported whole, and a pull of it pushed
// by skopeo --all take the same image, and where skopeo finds none, so
// does layerfs.
func TestPlatformChoiceAgreesWithSkopeo(t *testing.T) {
	requireRoot(t)
	testimage.RequireTool(t, "skopeo")
	layout := filepath.Join(t.TempDir(), "layout")
	indexes := map[string][]string{
		"arms": {"arm/v5", "arm/v6", "arm/v7", "arm64"},
		"low":  {"arm/v5", "arm/v6"},
		"v6":   {"arm/v6", "amd64"},
		"v8":   {"arm/v8"},
	}
	for name, platforms := range indexes {
		var imgs []testimage.Image
		for _, p := range platforms {
			arch, variant, _ := strings.Cut(p, "/")
			imgs = append(imgs, testimage.Image{Arch: arch, Variant: variant, Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("platform", p+"\n")}}}})
		}
		if _, err := testimage.WriteIndexImage(layout, name, imgs...); err != nil {
			t.Fatal(err)
		}
	}
	whole := t.TempDir()
	mustRun(t, whole, "import", "--all-platforms", layout)
	reg := startRegistry(t, registryOptions{})
	for _, c := range []struct{ index, platform string }{
		{"arms", "linux/arm"}, {"arms", "linux/arm/v6"}, {"arms", "linux/arm/v8"},
		{"low", "linux/arm"}, {"low", "linux/arm/v7"}, {"low", "linux/arm/v5"},
		{"v6", "linux/arm/v7"}, {"v6", "linux/arm"}, {"v6", "linux/arm/v5"},
		{"v8", "linux/arm"}, {"v8", "linux/arm/v7"},
	} {
		t.Run(c.index+" "+c.platform, func(t *testing.T) {
			p := strings.Split(c.platform, "/")
			args := []string{"--override-os", p[0], "--override-arch", p[1]}
			if len(p) == 3 {
				args = append(args, "--override-variant", p[2])
			}
			cmd := exec.Command("skopeo", append(args, "inspect", "--config", "--raw", "oci:"+layout+":"+c.index)...)
			config, err := cmd.Output()
			want := "none"
			if err == nil {
				want = digest.FromBytes(config).String()
			}
			configOf := func(r result) string {
				if r.code != 0 {
					return "none"
				}
				return strings.TrimSpace(r.stdout)
			}
			inspect := []string{"inspect", "--platform", c.platform, "--format", "{{.Manifest.Config.Digest}}", c.index}
			if got := configOf(run(t, whole, inspect...)); got != want {
				t.Errorf("a view of the whole index takes config %s, skopeo %s", got, want)
			}
			one := t.TempDir()
			if r := run(t, one, "import", "--platform", c.platform, layout+":"+c.index); (r.code == 0) != (want != "none") {
				t.Errorf("import --platform: exit %d, stderr %q; skopeo takes %s", r.code, r.stderr, want)
			} else if got := configOf(run(t, one, inspect...)); r.code == 0 && got != want {
				t.Errorf("import --platform takes config %s, skopeo %s", got, want)
			}
			ref := reg.host + "/layerfs/" + c.index + ":1"
			push(t, layout, c.index, ref, "--all")
			pulled := t.TempDir()
			if r := run(t, pulled, "pull", "--quiet", "--platform", c.platform, ref); (r.code == 0) != (want != "none") {
				t.Errorf("pull --platform: exit %d, stderr %q; skopeo takes %s", r.code, r.stderr, want)
			} else if got := configOf(run(t, pulled, "inspect", "--platform", c.platform, "--format", "{{.Manifest.Config.Digest}}", ref)); r.code == 0 && got != want {
				t.Errorf("pull --platform takes config %s, skopeo %s", got, want)
			}
		})
	}
}

// TestImportSkopeoCompressions imports what skopeo copy writes with
// layers in gzip, zstd (--dest-compress-format zstd), zstd:chunked and none
// (--dest-decompress, --dest-oci-accept-uncompressed-layers), as an OCI
// layout and an oci-archive, and all of them with a two-platform index
// (--all) in one layout: each image is listed under its ref name with
// the digest skopeo inspect gives, its layers of the media type skopeo
// wrote, and the view is the sample's under kernel overlayfs.
func TestImportSkopeoCompressions(t *testing.T) {
	requireRoot(t)
	testimage.RequireTool(t, "skopeo")
	sample := sampleImage(t)
	work := t.TempDir()
	skopeo := func(args ...string) []byte {
		return testimage.RunTool(t, "skopeo", append([]string{"--insecure-policy"}, args...)...)
	}
	src := "oci:" + sample.layout + ":" + sample.ref
	plainDir := filepath.Join(work, "plain-dir")
	skopeo("copy", "--quiet", "--dest-decompress", src, "dir:"+plainDir)
	layouts := map[string]string{}
	for _, c := range []struct{ name, mediaType string }{
		{"gzip", ocispec.MediaTypeImageLayerGzip},
		{"zstd", ocispec.MediaTypeImageLayerZstd},
		{"zstd:chunked", ocispec.MediaTypeImageLayerZstd},
		{"none", ocispec.MediaTypeImageLayer},
	} {
		// Each in a layout of its own, where skopeo finds no blob to
		// reuse in another compression.
		file := strings.ReplaceAll(c.name, ":", "-")
		layout := filepath.Join(work, file)
		switch c.name {
		case "gzip":
			skopeo("copy", "--quiet", src, "oci:"+layout+":s")
		case "zstd", "zstd:chunked":
			skopeo("copy", "--quiet", "--dest-compress-format", c.name, src, "oci:"+layout+":s")
		case "none":
			skopeo("copy", "--quiet", "--dest-oci-accept-uncompressed-layers", "dir:"+plainDir, "oci:"+layout+":s")
		}
		layouts[file] = layout
		archive := filepath.Join(work, file+".tar")
		skopeo("copy", "--quiet", "--preserve-digests", "oci:"+layout+":s", "oci-archive:"+archive+":s")
		for _, arg := range []string{"oci:" + layout + ":s", "oci-archive:" + archive + ":s", layout, archive} {
			t.Run(c.name+" "+filepath.Base(arg), func(t *testing.T) {
				var si struct{ Digest digest.Digest }
				skopeoArg := arg
				if !strings.Contains(arg, ":") {
					skopeoArg = "oci:" + arg + ":s"
					if strings.HasSuffix(arg, ".tar") {
						skopeoArg = "oci-archive:" + arg + ":s"
					}
				}
				must(t, json.Unmarshal(skopeo("inspect", skopeoArg), &si))
				root := t.TempDir()
				pulledAs(t, mustRun(t, root, "import", arg), "s", si.Digest)
				for _, mt := range strings.Fields(mustRun(t, root, "layers", "--format", "{{.MediaType}}")) {
					if mt != c.mediaType {
						t.Errorf("layers lists a %s layer, want %s", mt, c.mediaType)
					}
				}
				requireVerifies(t, root)
				requireView(t, root, sample.blobs, "s")
			})
		}
	}

	// One layout of them all, each under a name of its own, and an index
	// of two platforms copied whole.
	several := filepath.Join(work, "several")
	for name, layout := range layouts {
		skopeo("copy", "--quiet", "--preserve-digests", "oci:"+layout+":s", "oci:"+several+":"+name)
	}
	multi := filepath.Join(work, "multi")
	arch := func(a string) []testimage.Layer {
		return []testimage.Layer{{Compression: testimage.Zstd, Entries: []testimage.Entry{testimage.File("arch", a+"\n")}}}
	}
	if _, err := testimage.WriteIndexImage(multi, "multi",
		testimage.Image{Arch: "amd64", Layers: arch("amd64")},
		testimage.Image{Arch: "arm64", Variant: "v8", Layers: arch("arm64")}); err != nil {
		t.Fatal(err)
	}
	skopeo("copy", "--quiet", "--all", "--preserve-digests", "oci:"+multi+":multi", "oci:"+several+":multi")
	idx, err := testimage.ReadIndex(several)
	must(t, err)
	root := t.TempDir()
	out := mustRun(t, root, "import", "--all-platforms", several)
	var want []string
	for _, d := range idx.Manifests {
		name := d.Annotations[ocispec.AnnotationRefName]
		var si struct{ Digest digest.Digest }
		must(t, json.Unmarshal(skopeo("inspect", "oci:"+several+":"+name), &si))
		if si.Digest != d.Digest {
			t.Errorf("skopeo inspect gives %s for %s, index.json %s", si.Digest, name, d.Digest)
		}
		pulledAs(t, out, name, d.Digest)
		want = append(want, fmt.Sprintf("%s %s", name, d.Digest))
		if name != "multi" {
			requireView(t, root, sample.blobs, name)
		}
	}
	slices.Sort(want)
	if got := mustRun(t, root, "images", "--no-trunc", "--format", "{{.Name}} {{.Digest}}"); got != strings.Join(want, "\n")+"\n" {
		t.Errorf("images lists\n%swant\n%s", got, strings.Join(want, "\n"))
	}
	if got := strings.TrimSpace(mustRun(t, root, "images", "--format", "{{.Platform}}", "multi")); got != "linux/amd64,linux/arm64/v8" {
		t.Errorf("images shows multi for %q", got)
	}
	for _, a := range []string{"amd64", "arm64"} {
		if got := mustRun(t, root, "cat", "--platform", "linux/"+a, "multi", "/arch"); got != a+"\n" {
			t.Errorf("cat --platform linux/%s multi /arch: %q", a, got)
		}
	}
	requireVerifies(t, root)
}

// TestImportSkopeoAdditionalTags imports a docker-archive that skopeo
// wrote with --additional-tag, its one way of putting several names in an
// archive: every tag is a name of the one image, listed in the
// archive's manifest.json order with one digest, and each is taken alone
// by docker-archive:FILE:TAG, a tag left out read as latest, as skopeo
// reads it.
func TestImportSkopeoAdditionalTags(t *testing.T) {
	requireRoot(t)
	testimage.RequireTool(t, "skopeo")
	a, _ := twoImages()
	layout, descs := layoutWith(t, a)
	archive := filepath.Join(t.TempDir(), "tags.tar")
	testimage.RunTool(t, "skopeo", "--insecure-policy", "copy", "--quiet", "--additional-tag", "example/a:2", "--additional-tag", "other/x:latest",
		"oci:"+layout+":a", "docker-archive:"+archive+":example/a:1")
	var manifest []struct{ RepoTags []string }
	must(t, json.Unmarshal(testimage.RunTool(t, "tar", "-xOf", archive, "manifest.json"), &manifest))
	if len(manifest) != 1 || len(manifest[0].RepoTags) != 3 {
		t.Fatalf("skopeo's manifest.json: %+v; want one image of three tags", manifest)
	}
	root := t.TempDir()
	out := mustRun(t, root, "import", archive)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var names []string
	for _, l := range lines {
		f := strings.Fields(l)
		names = append(names, f[0])
		if f[1] != strings.Fields(lines[0])[1] {
			t.Errorf("import printed two digests for one image:\n%s", out)
		}
	}
	if !slices.Equal(names, manifest[0].RepoTags) {
		t.Errorf("import printed %v, want skopeo's tags %v", names, manifest[0].RepoTags)
	}
	if got := mustRun(t, root, "inspect", "--format", "{{.Names}}", "other/x"); got != "["+strings.Join(slices.Sorted(slices.Values(manifest[0].RepoTags)), " ")+"]\n" {
		t.Errorf("inspect --format {{.Names}} other/x: %q", got)
	}
	for _, tag := range []string{"example/a:2", "other/x", "docker.io/other/x:latest"} {
		one := t.TempDir()
		skopeoName := struct{ Name string }{}
		must(t, json.Unmarshal(testimage.RunTool(t, "skopeo", "inspect", "docker-archive:"+archive+":"+tag), &skopeoName))
		got := importedNames(mustRun(t, one, "import", "docker-archive:"+archive+":"+tag))
		if len(got) != 1 || !strings.HasPrefix(got[0], skopeoName.Name+":") {
			t.Errorf("import of %s stored %v; skopeo reads it as %s", tag, got, skopeoName.Name)
		}
		requireView(t, one, layerBlobs(t, layout, descs[0]), got[0])
	}
	mustRun(t, root, "rm", "example/a:1")
	requireView(t, root, layerBlobs(t, layout, descs[0]), "example/a:2")
	requireVerifies(t, root)
}

// TestIndexEntriesWithoutPlatform reads the platform of an index entry
// that names none from its image's config, as containerd does: each
// entry is also named in the layout, so that skopeo inspect --config
// tells the platform of each. Import, a view and a pull of the index
// (pushed by skopeo --all) choose by it, images lists it ("unknown"
// where the config names none either), and a platform no config names is
// refused naming those they do.
func TestIndexEntriesWithoutPlatform(t *testing.T) {
	requireRoot(t)
	testimage.RequireTool(t, "skopeo")
	layout := filepath.Join(t.TempDir(), "layout")
	var entries []ocispec.Descriptor
	for _, p := range []string{"arm64/v8", "arm/v7", "arm/v6"} {
		arch, variant, _ := strings.Cut(p, "/")
		descs, err := testimage.WriteLayout(layout, testimage.Image{Name: "only-" + arch + variant, Arch: arch, Variant: variant,
			Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("platform", p+"\n")}}}})
		must(t, err)
		entries = append(entries, ocispec.Descriptor{MediaType: descs[0].MediaType, Digest: descs[0].Digest, Size: descs[0].Size})
	}
	// And an image, of the first one's layer, whose config names no
	// platform either.
	m, c, err := testimage.ReadImage(layout, entries[0])
	must(t, err)
	data, _ := json.Marshal(map[string]any{"rootfs": c.RootFS})
	config := writeBlob(t, layout, ocispec.MediaTypeImageConfig, data)
	data, _ = json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: m.Layers})
	bare := writeBlob(t, layout, ocispec.MediaTypeImageManifest, data)
	entries = append(entries, bare)
	data, _ = json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: entries})
	idxDesc := writeBlob(t, layout, ocispec.MediaTypeImageIndex, data)
	idx, err := testimage.ReadIndex(layout)
	must(t, err)
	bare.Annotations = map[string]string{ocispec.AnnotationRefName: "only-bare"}
	idx.Manifests = append(idx.Manifests, bare)
	idxDesc.Annotations = map[string]string{ocispec.AnnotationRefName: "noplat"}
	idx.Manifests = append(idx.Manifests, idxDesc)
	data, _ = json.Marshal(idx)
	must(t, os.WriteFile(filepath.Join(layout, "index.json"), data, 0o644))

	// What skopeo says each entry is for, from its config.
	platformOf := map[digest.Digest]string{}
	var platforms []string
	for _, d := range idx.Manifests[:len(entries)] {
		var c ocispec.Image
		must(t, json.Unmarshal(testimage.RunTool(t, "skopeo", "inspect", "--config", "--raw", "oci:"+layout+":"+d.Annotations[ocispec.AnnotationRefName]), &c))
		p := c.OS + "/" + c.Architecture + "/" + c.Variant
		if p == "//" {
			p = "unknown"
		}
		platformOf[d.Digest] = p
		platforms = append(platforms, p)
	}
	// The refusals name one of no platform as such.
	hasPlatforms := strings.ReplaceAll(strings.Join(platforms, ", "), "unknown", "unknown platform")
	whole := t.TempDir()
	mustRun(t, whole, "import", "--all-platforms", layout+":noplat")
	if got := strings.TrimSpace(mustRun(t, whole, "images", "--format", "{{.Platform}}", "noplat")); got != strings.Join(platforms, ",") {
		t.Errorf("images shows platforms %q; the configs name %v", got, platforms)
	}
	reg := startRegistry(t, registryOptions{})
	ref := reg.host + "/layerfs/noplat:1"
	push(t, layout, "noplat", ref, "--all", "--preserve-digests")
	for _, c := range []struct{ platform, want string }{
		{"linux/arm64", "linux/arm64/v8"},
		{"linux/arm", "linux/arm/v7"},
		{"linux/arm/v6", "linux/arm/v6"},
		{"linux/amd64", ""},
	} {
		t.Run(c.platform, func(t *testing.T) {
			manifestOf := func(r result) string {
				if r.code != 0 {
					return ""
				}
				return platformOf[digest.Digest(strings.TrimSpace(r.stdout))]
			}
			inspect := []string{"inspect", "--platform", c.platform, "--format", "{{.Digest}}"}
			if got := manifestOf(run(t, whole, append(inspect, "noplat")...)); got != c.want {
				t.Errorf("a view takes the manifest for %q, want %q", got, c.want)
			}
			one := t.TempDir()
			r := run(t, one, "import", "--platform", c.platform, layout+":noplat")
			if c.want == "" {
				if r.code != 1 || !strings.Contains(r.stderr, "(has "+hasPlatforms+")") {
					t.Errorf("import --platform %s: exit %d, stderr %q; want a refusal naming the configs' platforms", c.platform, r.code, r.stderr)
				}
			} else if got := manifestOf(run(t, one, append(inspect, "noplat")...)); r.code != 0 || got != c.want {
				t.Errorf("import --platform: exit %d (%s), takes the manifest for %q, want %q", r.code, r.stderr, got, c.want)
			}
			pulled := t.TempDir()
			r = run(t, pulled, "pull", "--quiet", "--platform", c.platform, ref)
			if c.want == "" {
				if r.code != 1 || !strings.Contains(r.stderr, "(has "+hasPlatforms+")") {
					t.Errorf("pull --platform %s: exit %d, stderr %q; want a refusal naming the configs' platforms", c.platform, r.code, r.stderr)
				}
			} else if got := manifestOf(run(t, pulled, append(inspect, ref)...)); r.code != 0 || got != c.want {
				t.Errorf("pull --platform: exit %d (%s), takes the manifest for %q, want %q", r.code, r.stderr, got, c.want)
			}
		})
	}
}

// TestImportNestedIndexes imports an index whose entries are indexes
// themselves (one of linux/amd64, one of linux/arm64/v8 and linux/arm/v7),
// beside a single image in the same layout, which skopeo copy --all
// refuses to copy: each platform is found through the index that holds
// it, the manifest being the one the layout's JSON lists for it.
func TestImportNestedIndexes(t *testing.T) {
	requireRoot(t)
	layout := filepath.Join(t.TempDir(), "layout")
	img := func(p string) testimage.Image {
		arch, variant, _ := strings.Cut(p, "/")
		return testimage.Image{Arch: arch, Variant: variant, Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("platform", p+"\n")}}}}
	}
	first, err := testimage.WriteIndexImage(layout, "first", img("amd64"))
	must(t, err)
	second, err := testimage.WriteIndexImage(layout, "second", img("arm64/v8"), img("arm/v7"))
	must(t, err)
	var subs []ocispec.Descriptor
	manifestFor := map[string]digest.Digest{}
	for _, d := range []ocispec.Descriptor{first, second} {
		data, err := os.ReadFile(testimage.BlobPath(layout, d.Digest))
		must(t, err)
		var idx ocispec.Index
		must(t, json.Unmarshal(data, &idx))
		for _, m := range idx.Manifests {
			manifestFor[platformOf(m.Platform)] = m.Digest
		}
		subs = append(subs, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
	}
	data, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: subs})
	top := writeBlob(t, layout, ocispec.MediaTypeImageIndex, data)
	top.Annotations = map[string]string{ocispec.AnnotationRefName: "nested"}
	_, err = testimage.WriteLayout(layout, testimage.Image{Name: "single", Layers: img("amd64").Layers})
	must(t, err)
	idx, err := testimage.ReadIndex(layout)
	must(t, err)
	idx.Manifests = slices.DeleteFunc(append(idx.Manifests, top), func(d ocispec.Descriptor) bool {
		return d.Annotations[ocispec.AnnotationRefName] == "first" || d.Annotations[ocispec.AnnotationRefName] == "second"
	})
	data, _ = json.Marshal(idx)
	must(t, os.WriteFile(filepath.Join(layout, "index.json"), data, 0o644))
	if out, err := exec.Command("skopeo", "--insecure-policy", "copy", "--all", "oci:"+layout+":nested", "oci:"+t.TempDir()+":x").CombinedOutput(); err == nil {
		t.Logf("skopeo copy --all now copies nested indexes: %s", out)
	}

	root := t.TempDir()
	out := mustRun(t, root, "import", layout)
	pulledAs(t, out, "nested", top.Digest)
	if got := importedNames(out); !slices.Equal(got, []string{"nested", "single"}) {
		t.Errorf("import printed %v, want nested and single", got)
	}
	for _, c := range []struct{ platform, want string }{
		{"linux/amd64", "linux/amd64"}, {"linux/arm64", "linux/arm64/v8"}, {"linux/arm", "linux/arm/v7"},
	} {
		one := t.TempDir()
		mustRun(t, one, "import", "--platform", c.platform, layout+":nested")
		if got := strings.TrimSpace(mustRun(t, one, "inspect", "--platform", c.platform, "--format", "{{.Digest}}", "nested")); got != manifestFor[c.want].String() {
			t.Errorf("import --platform %s takes manifest %s; the layout lists %s for %s", c.platform, got, manifestFor[c.want], c.want)
		}
		if got := mustRun(t, one, "cat", "--platform", c.platform, "nested", "/platform"); got != strings.TrimPrefix(c.want, "linux/")+"\n" {
			t.Errorf("cat --platform %s /platform: %q", c.platform, got)
		}
	}
	all := t.TempDir()
	mustRun(t, all, "import", "--all-platforms", layout+":nested")
	if got := strings.TrimSpace(mustRun(t, all, "images", "--format", "{{.Platform}}")); got != "linux/amd64,linux/arm64/v8,linux/arm/v7" {
		t.Errorf("images shows the nested index for %q", got)
	}
	requireVerifies(t, all)
}

// platformOf writes an index entry's platform as images lists it.
func platformOf(p *ocispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}
