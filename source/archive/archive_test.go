package archive

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/store"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestSplitRef(t *testing.T) {
	dir := t.TempDir()
	colons := filepath.Join(dir, "a:b")
	if err := os.Mkdir(colons, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ arg, src, ref string }{
		{dir, dir, ""},
		{dir + ":v1", dir, "v1"},
		{dir + ":host:5000/repo:tag", dir, "host:5000/repo:tag"},
		{colons, colons, ""},
		{colons + ":v1", colons, "v1"},
		{dir + "/missing:v1", dir + "/missing:v1", ""},
		// skopeo's transports, as its users write them.
		{"oci:" + dir + ":v1", dir, "v1"},
		{"oci-archive:" + colons, colons, ""},
		{"docker-archive:" + dir + ":example/a:1", dir, "example/a:1"},
		{"oci:" + dir + "/missing", "oci:" + dir + "/missing", ""},
	} {
		if src, ref := SplitRef(c.arg); src != c.src || ref != c.ref {
			t.Errorf("SplitRef(%q) = %q, %q; want %q, %q", c.arg, src, ref, c.src, c.ref)
		}
	}
}

// overlayFS serves some files from memory and the rest from below.
type overlayFS struct {
	fstest.MapFS
	below fs.FS
}

func (o overlayFS) Open(name string) (fs.File, error) {
	if _, ok := o.MapFS[name]; ok {
		return o.MapFS.Open(name)
	}
	return o.below.Open(name)
}

// TestImportJibLowercaseKeys reads a manifest.json with jib's lowercase
// keys as docker load does.
func TestImportJibLowercaseKeys(t *testing.T) {
	archive := filepath.Join(t.TempDir(), "jib.tar")
	img := testimage.Image{Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("app.jar", "jar")}}}}
	if err := testimage.WriteDockerArchive(archive, []string{"example/jib:1"}, img); err != nil {
		t.Fatal(err)
	}
	fsys, closer, err := openSource(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	data, err := fs.ReadFile(fsys, "manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	lower := strings.NewReplacer(`"Config"`, `"config"`, `"RepoTags"`, `"repoTags"`, `"Layers"`, `"layers"`).Replace(string(data))
	if lower == string(data) {
		t.Fatalf("manifest.json has no docker keys to lowercase: %s", data)
	}
	s, _ := newStore(t)
	got, err := importDockerArchive(context.Background(), s, overlayFS{fstest.MapFS{"manifest.json": {Data: []byte(lower)}}, fsys}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "docker.io/example/jib:1" {
		t.Fatalf("imported %v", got)
	}
	target, err := s.Resolve([]string{"example/jib:1"})
	if err != nil || len(target.Layers) != 1 {
		t.Fatalf("resolve: %v, %v", target, err)
	}
}

// TestImportNamesDocker25LayerOrder refuses an OCI manifest whose
// uncompressed layers are its config's diff_ids in another order, the
// docker 25.0.0 bug, naming it.
func TestImportNamesDocker25LayerOrder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	img := testimage.Image{Name: "swapped", Layers: []testimage.Layer{
		{Entries: []testimage.Entry{testimage.File("a", "a")}, Compression: testimage.None},
		{Entries: []testimage.Entry{testimage.File("b", "b")}, Compression: testimage.None},
	}}
	descs, err := testimage.WriteLayout(dir, img)
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := testimage.ReadImage(dir, descs[0])
	if err != nil {
		t.Fatal(err)
	}
	m.Layers[0], m.Layers[1] = m.Layers[1], m.Layers[0]
	data, _ := json.Marshal(m)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(data), Size: int64(len(data)),
		Annotations: map[string]string{store.AnnotationRefName: "swapped"}}
	if err := os.WriteFile(testimage.BlobPath(dir, desc.Digest), data, 0o644); err != nil {
		t.Fatal(err)
	}
	index, _ := json.Marshal(ocispec.Index{Versioned: m.Versioned, Manifests: []ocispec.Descriptor{desc}})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ := newStore(t)
	_, err = Import(context.Background(), s, dir, Options{})
	if err == nil || !strings.Contains(err.Error(), "moby #47150") {
		t.Fatalf("import: %v; want the docker 25.0.0 layer order named", err)
	}
	if _, problems, err := s.Verify(nil); err != nil || len(problems) > 0 {
		t.Errorf("verify after refusal: %v %v", problems, err)
	}
}

// TestOnDisk: what pull takes for import's is a path that exists and
// could hold images, alone or before :REF; a plain directory that happens
// to bear an image's name is not.
func TestOnDisk(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"plain", "layout", "dockerarchive"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"layout/index.json", "dockerarchive/manifest.json", "image.tar"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for arg, want := range map[string]bool{
		"plain":         false,
		"plain:v1":      false,
		"missing":       false,
		"layout":        true,
		"layout:a":      true,
		"dockerarchive": true,
		"image.tar":     true,
		"image.tar:@0":  true,
	} {
		if got := OnDisk(filepath.Join(dir, arg)); got != want {
			t.Errorf("OnDisk(%s): %v, want %v", arg, got, want)
		}
	}
}

// refusingFS is a source whose every open fails with err.
type refusingFS struct{ err error }

func (r refusingFS) Open(name string) (fs.File, error) {
	return nil, &fs.PathError{Op: "openat", Path: name, Err: r.err}
}

// TestUnreadableSourceIsNotCalledNotAnImage: a layout whose index.json
// cannot be read (not the user's to read, no descriptor left) is
// reported as that, not as "neither an OCI image layout nor a
// docker-archive", which would send the user looking at the wrong thing.
func TestUnreadableSourceIsNotCalledNotAnImage(t *testing.T) {
	s, _ := newStore(t)
	for _, errno := range []error{fs.ErrPermission, syscall.EMFILE} {
		_, err := importFS(context.Background(), s, "src", refusingFS{errno}, Options{})
		if !errors.Is(err, errno) || errors.Is(err, errNotImage) {
			t.Errorf("source failing with %v: %v; want that error, not %q", errno, err, errNotImage)
		}
	}
	_, err := importFS(context.Background(), s, "src", refusingFS{fs.ErrNotExist}, Options{})
	if !errors.Is(err, errNotImage) {
		t.Errorf("source holding nothing: %v; want %q", err, errNotImage)
	}
}
