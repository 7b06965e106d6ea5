package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// pulledAs checks pull's output line for ref: the name it is listed
// under, then the manifest digest.
func pulledAs(t testing.TB, out, name string, manifest digest.Digest) {
	t.Helper()
	if want := fmt.Sprintf("%s %s\n", name, manifest); !strings.Contains(out, want) {
		t.Fatalf("pull printed %q, want the line %q", out, want)
	}
}

// manifestOf is the digest of image ref in an OCI layout.
func manifestOf(t testing.TB, layout, ref string) ocispec.Descriptor {
	t.Helper()
	var idx ocispec.Index
	data, err := os.ReadFile(filepath.Join(layout, ocispec.ImageIndexFile))
	if err == nil {
		err = json.Unmarshal(data, &idx)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range idx.Manifests {
		if m.Annotations[ocispec.AnnotationRefName] == ref {
			return m
		}
	}
	t.Fatalf("no %s in %s", ref, layout)
	return ocispec.Descriptor{}
}

// randomImage is an image of layers of incompressible files, sizes in
// bytes, one file a layer, so that its blobs are as big as asked.
func randomImage(t testing.TB, name string, sizes ...int) layoutImage {
	t.Helper()
	img := testimage.Image{Name: name}
	for i, n := range sizes {
		buf := make([]byte, n)
		rand.Read(buf)
		img.Layers = append(img.Layers, testimage.Layer{Compression: testimage.Gzip, Entries: []testimage.Entry{
			testimage.Dir("data", 0o755),
			testimage.File(fmt.Sprintf("data/layer%d", i), string(buf)),
		}})
	}
	return writeImage(t, img)
}

// TestPullMatchesOracle pulls the Debian image and the sample from a real
// registry, mounts them, and compares with kernel overlayfs over the
// layers as pushed. Pulling it again fetches no blob.
func TestPullMatchesOracle(t *testing.T) {
	requireRoot(t)
	reg := startRegistry(t, registryOptions{})
	proxy := startFaultProxy(t, reg.host)
	deb := debianLayoutImage(t)
	push(t, deb.layout, deb.ref, reg.host+"/layerfs/debian:bookworm")
	sample := sampleImage(t)
	push(t, sample.layout, sample.ref, reg.host+"/layerfs/sample:latest")

	root := t.TempDir()
	ref := proxy.host + "/layerfs/debian:bookworm"
	pulledAs(t, mustRun(t, root, "pull", ref), ref, manifestOf(t, deb.layout, deb.ref).Digest)
	// A docker-style short form is listed in full, as import lists a
	// docker-archive's tags; localhost is loopback, so plain HTTP.
	short := "localhost:" + strings.Split(reg.host, ":")[1] + "/layerfs/sample"
	pulledAs(t, mustRun(t, root, "pull", short), short+":latest", manifestOf(t, sample.layout, sample.ref).Digest)
	checkStore(t, root, "after pull")

	requireSame(t, "pulled debian", oracleTree(t, deb.blobs), walk(t, mountDaemon(t, root, ref)))
	requireSame(t, "pulled sample", oracleTree(t, sample.blobs), walk(t, mountDaemon(t, root, short)))

	before := proxy.blobBytes.Load()
	mustRun(t, root, "pull", "--quiet", ref)
	if fetched := proxy.blobBytes.Load() - before; fetched != 0 {
		t.Errorf("pulling an image the store holds fetched %d blob bytes", fetched)
	}
}

// TestPullPlatform pushes a two-platform index with skopeo --all and
// pulls each platform of it into one store: the name refers to the index,
// whose digest is the one skopeo inspect gives, and the second pull adds
// its platform under the same name, as import does.
func TestPullPlatform(t *testing.T) {
	reg := startRegistry(t, registryOptions{})
	layout := filepath.Join(t.TempDir(), "layout")
	files := func(arch string) []testimage.Layer {
		return []testimage.Layer{{Entries: []testimage.Entry{testimage.File("arch", arch+"\n")}}}
	}
	if _, err := testimage.WriteIndexImage(layout, "multi",
		testimage.Image{Arch: "amd64", Layers: files("amd64")},
		testimage.Image{Arch: "arm64", Variant: "v8", Layers: files("arm64")}); err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/layerfs/multi:v1"
	push(t, layout, "multi", ref, "--all")
	var inspected struct{ Digest digest.Digest }
	if err := json.Unmarshal(testimage.RunTool(t, "skopeo", "inspect", "--tls-verify=false", "docker://"+ref), &inspected); err != nil {
		t.Fatal(err)
	}

	root := t.TempDir()
	pulledAs(t, mustRun(t, root, "pull", "--platform", "linux/arm64", ref), ref, inspected.Digest)
	platforms := func(root string) string {
		return strings.TrimSpace(mustRun(t, root, "images", "--format", "{{.Platform}}"))
	}
	if got := platforms(root); got != "linux/arm64/v8" {
		t.Errorf("after pulling linux/arm64, images shows platforms %q", got)
	}
	// Another host's image is inspected by its platform, as it is
	// mounted; the manifest is the one the registry's index lists.
	var idx ocispec.Index
	if err := json.Unmarshal(testimage.RunTool(t, "skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+ref), &idx); err != nil {
		t.Fatal(err)
	}
	var shown []struct{ ManifestDigest digest.Digest }
	if err := json.Unmarshal([]byte(mustRun(t, root, "inspect", "--platform", "linux/arm64", ref)), &shown); err != nil {
		t.Fatal(err)
	}
	if len(shown) != 1 || shown[0].ManifestDigest != idx.Manifests[1].Digest {
		t.Errorf("inspect --platform linux/arm64 shows %v, want the manifest %s", shown, idx.Manifests[1].Digest)
	}
	pulledAs(t, mustRun(t, root, "pull", "--platform", "linux/amd64", ref), ref, inspected.Digest)
	if got := platforms(root); got != "linux/amd64,linux/arm64/v8" {
		t.Errorf("after pulling linux/amd64 too, images shows platforms %q", got)
	}
	for _, arch := range []string{"amd64", "arm64"} {
		if got := mustRun(t, root, "cat", "--platform", "linux/"+arch, ref, "/arch"); got != arch+"\n" {
			t.Errorf("cat --platform linux/%s /arch: %q", arch, got)
		}
	}
	checkStore(t, root, "after pulling two platforms")

	all := t.TempDir()
	pulledAs(t, mustRun(t, all, "pull", "--all-platforms", ref), ref, inspected.Digest)
	if got := platforms(all); got != "linux/amd64,linux/arm64/v8" {
		t.Errorf("after pull --all-platforms, images shows platforms %q", got)
	}
	r := run(t, t.TempDir(), "pull", "--platform", "linux/s390x", ref)
	if r.code == 0 || !strings.Contains(r.stderr, ref) || !strings.Contains(r.stderr, "linux/s390x") {
		t.Errorf("pull of a platform the index lacks: exit %d, %q", r.code, r.stderr)
	}

	// skopeo copies the amd64 image alone: a lone manifest is pulled
	// whatever the platform, with a warning, as import gives one.
	single := reg.host + "/layerfs/single:v1"
	push(t, layout, "multi", single, "--override-arch", "amd64")
	r = run(t, t.TempDir(), "pull", "--platform", "linux/arm64", single)
	if warning := "image " + single + " is for linux/amd64, not linux/arm64"; r.code != 0 || !strings.Contains(r.stderr, warning) {
		t.Errorf("pull --platform linux/arm64 of an amd64 image: exit %d, stderr %q; want 0 and %q", r.code, r.stderr, warning)
	}
}

// TestPullThroughProxyRegistry puts a second registry, in proxy mode, in
// front of the first, and pulls through it by name and as a mirror.
func TestPullThroughProxyRegistry(t *testing.T) {
	requireRoot(t)
	origin := startRegistry(t, registryOptions{})
	cache := startRegistry(t, registryOptions{proxyOf: "http://" + origin.host})
	sample := sampleImage(t)
	push(t, sample.layout, sample.ref, origin.host+"/layerfs/sample:v1")
	other := randomImage(t, "other", 300<<10)
	push(t, other.layout, other.ref, origin.host+"/layerfs/other:v1")

	root := t.TempDir()
	ref := cache.host + "/layerfs/sample:v1"
	pulledAs(t, mustRun(t, root, "pull", ref), ref, manifestOf(t, sample.layout, sample.ref).Digest)
	requireSame(t, "sample through the cache", oracleTree(t, sample.blobs), walk(t, mountDaemon(t, root, ref)))

	// As a mirror, named in the registries config after one that is down:
	// the image is listed under the origin's name, and came from the cache.
	config := filepath.Join(t.TempDir(), "registries.json")
	mirrors := map[string]map[string][]string{"mirrors": {origin.host: {freeLoopbackAddr(t), cache.host}}}
	data, _ := json.Marshal(mirrors)
	if err := os.WriteFile(config, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ref = origin.host + "/layerfs/other:v1"
	pulledAs(t, mustRun(t, root, "pull", "--registries-config", config, ref), ref, manifestOf(t, other.layout, other.ref).Digest)
	for _, l := range other.layers {
		cached := filepath.Join(cache.storage, "docker/registry/v2/blobs/sha256", l.Encoded()[:2], l.Encoded(), "data")
		if _, err := os.Stat(cached); err != nil {
			t.Errorf("layer %s did not come through the cache: %v", l, err)
		}
	}
	checkStore(t, root, "after pulls through the cache")
}

// TestPullFaults breaks a registry's answers: the pull gets through
// 503s, 429s and cut connections, and refuses a blob of the wrong bytes.
func TestPullFaults(t *testing.T) {
	reg := startRegistry(t, registryOptions{})
	proxy := startFaultProxy(t, reg.host)
	img := randomImage(t, "faults", 1<<20, 2<<20, 512<<10)
	push(t, img.layout, img.ref, reg.host+"/layerfs/faults:v1")
	ref := proxy.host + "/layerfs/faults:v1"

	t.Run("transient", func(t *testing.T) {
		proxy.setFaults(func(path string, n int) fault {
			switch {
			case strings.Contains(path, "/manifests/") && n == 1:
				return fault{status: 503}
			case !strings.Contains(path, "/blobs/"):
				return fault{}
			case n == 1:
				return fault{status: 503}
			case n == 2:
				return fault{status: 429}
			case n == 3:
				return fault{cutAt: 100 << 10}
			case n == 4:
				return fault{cutAt: 300 << 10}
			}
			return fault{}
		})
		ranged := proxy.ranged.Load()
		root := t.TempDir()
		pulledAs(t, mustRun(t, root, "pull", ref), ref, manifestOf(t, img.layout, img.ref).Digest)
		if proxy.ranged.Load() == ranged {
			t.Error("no blob was resumed with a Range request after a cut connection")
		}
		checkStore(t, root, "after a pull through faults")
	})

	t.Run("lying", func(t *testing.T) {
		bad := img.layers[1]
		proxy.setFaults(func(path string, n int) fault {
			return fault{corrupt: strings.HasSuffix(path, "/blobs/"+bad.String())}
		})
		root := t.TempDir()
		r := run(t, root, "pull", ref)
		if r.code == 0 || !strings.Contains(r.stderr, ref) || !strings.Contains(r.stderr, bad.String()) || !strings.Contains(r.stderr, "does not match") {
			t.Fatalf("pull of a wrong blob: exit %d, stderr %q; want a refusal naming %s and the layer", r.code, r.stderr, ref)
		}
		if n := strings.Count(r.stderr, "does not match"); n != 1 {
			t.Errorf("pull of a wrong blob said so %d times, want once:\n%s", n, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(root, "blobs/sha256", bad.Encoded())); !os.IsNotExist(err) {
			t.Errorf("the wrong blob is in the store: %v", err)
		}
		if _, err := os.Stat(filepath.Join(root, "tmp", "partial-"+bad.Encoded())); !os.IsNotExist(err) {
			t.Errorf("the wrong blob's bytes were kept: %v", err)
		}
		for _, l := range []digest.Digest{img.layers[0], img.layers[2]} {
			if _, err := os.Stat(filepath.Join(root, "blobs/sha256", l.Encoded())); err != nil {
				t.Errorf("good layer %s was not kept: %v", l, err)
			}
		}
		if out := mustRun(t, root, "images"); strings.Contains(out, ref) {
			t.Errorf("the image is listed after a refused pull:\n%s", out)
		}
		checkStore(t, root, "after a refused pull")
	})
}

// TestPullResumesAfterKill kills a pull mid-blob with SIGKILL and pulls
// again: the second run fetches only what the first did not.
func TestPullResumesAfterKill(t *testing.T) {
	reg := startRegistry(t, registryOptions{})
	proxy := startFaultProxy(t, reg.host)
	const size = 32 << 20
	img := randomImage(t, "big", size)
	push(t, img.layout, img.ref, reg.host+"/layerfs/big:v1")
	ref := proxy.host + "/layerfs/big:v1"
	blob := img.layers[0]
	st, err := os.Stat(img.blobs[0])
	if err != nil {
		t.Fatal(err)
	}

	root := t.TempDir()
	proxy.rate.Store(16 << 20)
	cmd := exec.Command(layerfsBin(t), "--root", root, "pull", "--quiet", ref)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a third of the blob to be fetched", func() bool { return proxy.blobBytes.Load() > st.Size()/3 })
	cmd.Process.Signal(syscall.SIGKILL)
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("pull was not killed mid-blob: %v", err)
	}
	partial, err := os.Stat(filepath.Join(root, "tmp", "partial-"+blob.Encoded()))
	if err != nil || partial.Size() == 0 {
		t.Fatalf("no partial blob after the kill: %v", err)
	}

	proxy.rate.Store(0)
	first := proxy.blobBytes.Load()
	ranged := proxy.ranged.Load()
	start := time.Now()
	pulledAs(t, mustRun(t, root, "pull", "--quiet", ref), ref, manifestOf(t, img.layout, img.ref).Digest)
	second := proxy.blobBytes.Load() - first
	t.Logf("killed with %d of %d bytes staged; the second pull fetched %d bytes in %v", partial.Size(), st.Size(), second, time.Since(start))
	if second >= st.Size() {
		t.Errorf("the second pull fetched %d bytes, not fewer than the blob's %d", second, st.Size())
	}
	if proxy.ranged.Load() == ranged {
		t.Error("the second pull made no Range request")
	}
	checkStore(t, root, "after a resumed pull")
}

// TestPullInterruptedAfterDownload interrupts a pull once a layer's blob
// is in the store but before the layer is extracted: layers lists it,
// not extracted, at the blob's size, and the next pull extracts it
// without fetching a byte of it from the registry.
func TestPullInterruptedAfterDownload(t *testing.T) {
	reg := startRegistry(t, registryOptions{})
	proxy := startFaultProxy(t, reg.host)
	// Many entries make the extraction outlast the download by far.
	entries := []testimage.Entry{testimage.Dir("d", 0o755)}
	for i := range 20000 {
		entries = append(entries, testimage.File(fmt.Sprintf("d/f%05d", i), fmt.Sprint(i)))
	}
	img := writeImage(t, testimage.Image{Name: "many", Layers: []testimage.Layer{{Compression: testimage.Gzip, Entries: entries}}})
	push(t, img.layout, img.ref, reg.host+"/layerfs/many:v1")
	ref := proxy.host + "/layerfs/many:v1"
	layer := img.layers[0]

	var root string
	for attempt := 0; ; attempt++ {
		root = t.TempDir()
		cmd := exec.Command(layerfsBin(t), "--root", root, "pull", "--quiet", ref)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		blob := filepath.Join(root, "blobs", "sha256", layer.Encoded())
		deadline := time.Now().Add(30 * time.Second)
		for _, err := os.Stat(blob); err != nil && time.Now().Before(deadline); _, err = os.Stat(blob) {
			time.Sleep(2 * time.Millisecond)
		}
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		if _, err := os.Stat(filepath.Join(root, "layers", "sha256", layer.Encoded(), "index")); errors.Is(err, os.ErrNotExist) {
			break
		}
		if attempt == 4 {
			t.Fatal("the layer was extracted before each of 5 interrupts sent as its blob appeared: the blob no longer lands in the store well before the extraction ends")
		}
	}
	st, err := os.Stat(filepath.Join(root, "blobs", "sha256", layer.Encoded()))
	if err != nil {
		t.Fatalf("the downloaded blob is not in the store: %v", err)
	}
	var layers []struct {
		Digest         digest.Digest
		CompressedSize int64
		Extracted      bool
	}
	if err := json.Unmarshal([]byte(mustRun(t, root, "layers", "--format", "json")), &layers); err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 || layers[0].Digest != layer || layers[0].Extracted || layers[0].CompressedSize != st.Size() {
		t.Errorf("layers after the interrupt: %+v; want %s alone, not extracted, %d bytes", layers, layer, st.Size())
	}
	proxy.setFaults(nil) // counts requests afresh
	pulledAs(t, mustRun(t, root, "pull", "--quiet", ref), ref, manifestOf(t, img.layout, img.ref).Digest)
	proxy.mu.Lock()
	asked := proxy.seen["/v2/layerfs/many/blobs/"+layer.String()]
	proxy.mu.Unlock()
	if asked != 0 {
		t.Errorf("the second pull asked the registry for the layer's blob %d times, want none", asked)
	}
	checkStore(t, root, "after the second pull")
}

// TestPullErrors checks that each failure names the reference and what
// failed, and that credentials come from docker's config and helpers.
func TestPullErrors(t *testing.T) {
	reg := startRegistry(t, registryOptions{})
	img := randomImage(t, "small", 4<<10)
	push(t, img.layout, img.ref, reg.host+"/layerfs/small:v1")
	refuse := func(t *testing.T, ref, want string) time.Duration {
		t.Helper()
		root := t.TempDir()
		start := time.Now()
		r := run(t, root, "pull", ref)
		took := time.Since(start)
		if r.code != 1 || !strings.Contains(r.stderr, ref) || !strings.Contains(r.stderr, want) {
			t.Errorf("pull %s: exit %d, stderr %q; want it to name the reference and %q", ref, r.code, r.stderr, want)
		}
		requireNothingPulled(t, root)
		return took
	}
	t.Run("unknown tag", func(t *testing.T) { refuse(t, reg.host+"/layerfs/small:nope", `unknown tag "nope"`) })
	t.Run("unknown repository", func(t *testing.T) { refuse(t, reg.host+"/layerfs/nothing:v1", "unknown repository") })
	t.Run("unknown digest", func(t *testing.T) {
		missing := digest.FromString("no such manifest")
		ref := reg.host + "/layerfs/small@" + missing.String()
		// skopeo finds no such manifest either.
		if out, err := exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+ref).CombinedOutput(); err == nil || !strings.Contains(string(out), "manifest unknown") {
			t.Errorf("skopeo inspect of a missing digest: %v, %s", err, out)
		}
		refuse(t, ref, "unknown manifest "+missing.String())
	})
	t.Run("unreachable", func(t *testing.T) {
		if took := refuse(t, freeLoopbackAddr(t)+"/layerfs/small:v1", "unreachable"); took > 10*time.Second {
			t.Errorf("an unreachable registry took %v to report", took)
		}
	})

	t.Run("credentials", func(t *testing.T) {
		authReg := startRegistry(t, registryOptions{user: "puller", password: "s3cret"})
		ref := authReg.host + "/layerfs/small:v1"
		push(t, img.layout, img.ref, ref, "--dest-creds=puller:s3cret")
		manifest := manifestOf(t, img.layout, img.ref).Digest
		dockerConfig(t, map[string]any{})
		refuse(t, ref, "registry "+authReg.host+" asks for credentials and none are stored for it in "+filepath.Join(os.Getenv("DOCKER_CONFIG"), "config.json"))
		dockerConfig(t, map[string]any{"auths": map[string]any{authReg.host: map[string]string{"auth": basicAuth("puller", "wrong")}}})
		refuse(t, ref, "registry "+authReg.host+" refused the credentials for it in "+filepath.Join(os.Getenv("DOCKER_CONFIG"), "config.json")+": GET")
		dockerConfig(t, map[string]any{"auths": map[string]any{authReg.host: map[string]string{"auth": basicAuth("puller", "s3cret")}}})
		pulledAs(t, mustRun(t, t.TempDir(), "pull", ref), ref, manifest)

		// A credential helper speaks docker's protocol: the server on
		// stdin, a JSON credential on stdout.
		bin := t.TempDir()
		helper := "#!/bin/sh\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"puller\",\"Secret\":\"s3cret\"}' \"$server\"\n"
		if err := os.WriteFile(filepath.Join(bin, "docker-credential-layerfstest"), []byte(helper), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
		dockerConfig(t, map[string]any{"credHelpers": map[string]string{authReg.host: "layerfstest"}})
		pulledAs(t, mustRun(t, t.TempDir(), "pull", ref), ref, manifest)
	})
}

// dockerConfig writes a docker config.json into a new directory and
// points DOCKER_CONFIG at it.
func dockerConfig(t *testing.T, config any) {
	t.Helper()
	dir := t.TempDir()
	data, err := json.Marshal(config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
}

func basicAuth(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
}

// TestPullLogTimes: with --quiet, each layer's log line says how long it
// waited for a download slot apart from how long it took once it had
// one: with one slot, a layer waits for the download before it.
func TestPullLogTimes(t *testing.T) {
	reg := startRegistry(t, registryOptions{})
	img := randomImage(t, "times", 8<<20, 8<<20, 8<<20)
	ref := reg.host + "/layerfs/times:1"
	push(t, img.layout, img.ref, ref)
	r := run(t, t.TempDir(), "pull", "--quiet", "--jobs", "1", ref)
	if r.code != 0 {
		t.Fatalf("pull: exit %d: %s", r.code, r.stderr)
	}
	field := func(line, name string) time.Duration {
		m := regexp.MustCompile(` ` + name + `=(\S+)`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("no %s= in %q", name, line)
		}
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("%s= in %q: %v", name, line, err)
		}
		return d
	}
	var lines int
	var waited time.Duration
	for _, line := range strings.Split(r.stderr, "\n") {
		if !strings.Contains(line, `msg="layer pulled"`) {
			continue
		}
		lines++
		w, took := field(line, "waited"), field(line, "took")
		if w < 0 || took <= 0 {
			t.Errorf("waited %v, took %v in %q", w, took, line)
		}
		waited += w
	}
	if lines != len(img.layers) || waited == 0 {
		t.Errorf("%d layer lines, waiting %v in all, want %d lines and some wait with one slot:\n%s", lines, waited, len(img.layers), r.stderr)
	}
}

// TestPullAgreesWithSkopeoInspect pushes the sample with skopeo in each
// layer compression (gzip, zstd, none) and as a docker schema 2 image,
// and a two-platform index, then pulls each by tag, by digest and by
// tag@digest: the digest pull prints is that of the manifest skopeo
// inspect --raw gives for the same reference, the store holds that
// manifest byte for byte (and the platform's manifest of an index), and
// the view is that of the sample's layers under kernel overlayfs.
func TestPullAgreesWithSkopeoInspect(t *testing.T) {
	requireRoot(t)
	reg := startRegistry(t, registryOptions{})
	sample := sampleImage(t)
	work := t.TempDir()
	copyLayout := func(dst string, args ...string) string {
		testimage.RunTool(t, "skopeo", append(append([]string{"--insecure-policy", "copy", "--quiet"}, args...), "oci:"+sample.layout+":"+sample.ref, dst)...)
		return dst
	}
	zstdLayout := filepath.Join(work, "zstd")
	copyLayout("oci:"+zstdLayout+":s", "--dest-compress-format", "zstd")
	plainDir := filepath.Join(work, "plain-dir")
	copyLayout("dir:"+plainDir, "--dest-decompress")
	plainLayout := filepath.Join(work, "plain")
	testimage.RunTool(t, "skopeo", "--insecure-policy", "copy", "--quiet", "--dest-oci-accept-uncompressed-layers", "dir:"+plainDir, "oci:"+plainLayout+":s")

	multi := filepath.Join(work, "multi")
	arch := func(a string) []testimage.Layer {
		return []testimage.Layer{{Entries: []testimage.Entry{testimage.File("arch", a+"\n")}}}
	}
	if _, err := testimage.WriteIndexImage(multi, "multi",
		testimage.Image{Arch: "amd64", Layers: arch("amd64")},
		testimage.Image{Arch: "arm64", Variant: "v8", Layers: arch("arm64")}); err != nil {
		t.Fatal(err)
	}

	// --preserve-digests: the registry gets the layout's manifests as
	// they are, no layer recompressed.
	pushed := func(layout, ref, repo string, extra ...string) string {
		dest := reg.host + "/layerfs/" + repo
		push(t, layout, ref, dest, append([]string{"--preserve-digests"}, extra...)...)
		return dest
	}
	raw := func(t *testing.T, ref string) []byte {
		return testimage.RunTool(t, "skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+ref)
	}
	type pulled struct {
		ref, mediaType, layerType string
		sample                    bool
	}
	// skopeo takes no tag and digest both; docker pulls such a reference
	// by its digest, the tag left unread.
	skopeoRef := func(ref string) string {
		name, d, ok := strings.Cut(ref, "@")
		if i := strings.LastIndex(name, ":"); ok && i > strings.LastIndex(name, "/") {
			return name[:i] + "@" + d
		}
		return ref
	}
	gz := pushed(sample.layout, sample.ref, "sample:gzip")
	zst := pushed(zstdLayout, "s", "sample:zstd")
	plain := pushed(plainLayout, "s", "sample:none")
	v2s2 := reg.host + "/layerfs/sample:v2s2"
	push(t, sample.layout, sample.ref, v2s2, "--format", "v2s2")
	index := pushed(multi, "multi", "multi:1", "--all")
	indexDigest := digest.FromBytes(raw(t, index))
	var idx ocispec.Index
	must(t, json.Unmarshal(raw(t, index), &idx))
	repo := reg.host + "/layerfs/multi"
	cases := []pulled{
		{gz, ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageLayerGzip, true},
		{zst, ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageLayerZstd, true},
		{plain, ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageLayer, true},
		{v2s2, "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.image.rootfs.diff.tar.gzip", true},
		{index, ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageLayerGzip, false},
		{repo + "@" + indexDigest.String(), ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageLayerGzip, false},
		{index + "@" + indexDigest.String(), ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageLayerGzip, false},
		{repo + "@" + idx.Manifests[1].Digest.String(), ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageLayerGzip, false},
	}
	for _, c := range cases {
		t.Run(strings.TrimPrefix(c.ref, reg.host+"/layerfs/"), func(t *testing.T) {
			root := t.TempDir()
			want := raw(t, skopeoRef(c.ref))
			var m struct {
				MediaType string
				Layers    []ocispec.Descriptor
			}
			must(t, json.Unmarshal(want, &m))
			if m.MediaType != c.mediaType {
				t.Fatalf("skopeo pushed a %s, not a %s", m.MediaType, c.mediaType)
			}
			pulledAs(t, mustRun(t, root, "pull", "--quiet", "--platform", "linux/arm64", c.ref), c.ref, digest.FromBytes(want))
			if got, err := os.ReadFile(filepath.Join(root, "blobs", "sha256", digest.FromBytes(want).Encoded())); err != nil || !bytes.Equal(got, want) {
				t.Errorf("the store's manifest is not skopeo inspect --raw's (%v):\n%s\nwant:\n%s", err, got, want)
			}
			var layers string
			if c.sample {
				for _, l := range m.Layers {
					if l.MediaType != c.layerType {
						t.Errorf("skopeo pushed a %s layer, not a %s", l.MediaType, c.layerType)
					}
				}
				requireView(t, root, sample.blobs, c.ref)
				layers = mustRun(t, root, "layers", "--format", "{{.MediaType}}")
			} else {
				// The platform's manifest, as the registry serves it.
				child := raw(t, repo+"@"+idx.Manifests[1].Digest.String())
				if got, err := os.ReadFile(filepath.Join(root, "blobs", "sha256", idx.Manifests[1].Digest.Encoded())); err != nil || !bytes.Equal(got, child) {
					t.Errorf("the store's linux/arm64 manifest is not skopeo inspect --raw's (%v)", err)
				}
				if got := mustRun(t, root, "cat", "--platform", "linux/arm64", c.ref, "/arch"); got != "arm64\n" {
					t.Errorf("cat /arch: %q", got)
				}
				layers = mustRun(t, root, "layers", "--format", "{{.MediaType}}")
			}
			for _, mt := range strings.Fields(layers) {
				if mt != c.layerType {
					t.Errorf("layers lists a %s layer, want %s", mt, c.layerType)
				}
			}
			// skopeo inspect's digest, layers and platform are the store's.
			var si struct {
				Digest       digest.Digest
				Layers       []digest.Digest
				Architecture string
				Os           string
			}
			skopeoArgs := []string{"--override-arch", "arm64", "inspect", "--tls-verify=false", "docker://" + skopeoRef(c.ref)}
			must(t, json.Unmarshal(testimage.RunTool(t, "skopeo", skopeoArgs...), &si))
			var li []struct {
				Manifest ocispec.Manifest
				Config   ocispec.Image
			}
			must(t, json.Unmarshal([]byte(mustRun(t, root, "inspect", "--platform", "linux/arm64", c.ref)), &li))
			if len(li) != 1 {
				t.Fatalf("inspect gave %d objects", len(li))
			}
			var got []digest.Digest
			for _, l := range li[0].Manifest.Layers {
				got = append(got, l.Digest)
			}
			if !slices.Equal(got, si.Layers) || li[0].Config.Architecture != si.Architecture || li[0].Config.OS != si.Os {
				t.Errorf("inspect: layers %v, %s/%s; skopeo inspect: %v, %s/%s", got, li[0].Config.OS, li[0].Config.Architecture, si.Layers, si.Os, si.Architecture)
			}
			if images := strings.TrimSpace(mustRun(t, root, "images", "--no-trunc", "--format", "{{.Digest}}")); images != si.Digest.String() {
				t.Errorf("images lists digest %s; skopeo inspect gives %s", images, si.Digest)
			}
			checkStore(t, root, "after the pull")
		})
	}
}

// TestPullTLS pulls from a loopback registry serving HTTPS with a
// certificate of a CA of its own, which layerfs must not speak plain HTTP
// to. Untrusted, it is refused, as skopeo refuses it, naming the host and
// where its CA goes; trusted through the system's store (SSL_CERT_FILE),
// docker's or containers' certs.d, or with verification skipped
// (--insecure), it is pulled, as skopeo reads it trusted the same way.
func TestPullTLS(t *testing.T) {
	ca := newTestCA(t)
	reg := startRegistry(t, registryOptions{tls: ca})
	img := randomImage(t, "small", 4<<10)
	ref := reg.host + "/layerfs/small:v1"
	push(t, img.layout, img.ref, ref)
	manifest := manifestOf(t, img.layout, img.ref).Digest
	skopeoInspect := func(extra ...string) (string, error) {
		out, err := exec.Command("skopeo", append(append([]string{"inspect", "--raw"}, extra...), "docker://"+ref)...).CombinedOutput()
		return string(out), err
	}

	t.Run("untrusted", func(t *testing.T) {
		if out, err := skopeoInspect(); err == nil || !strings.Contains(out, "unknown authority") {
			t.Errorf("skopeo inspect of an untrusted registry: %v, %s", err, out)
		}
		root := t.TempDir()
		r := run(t, root, "pull", ref)
		for _, want := range []string{ref, "certificate of " + reg.host + " is not trusted", "/etc/docker/certs.d/" + reg.host + "/ca.crt", "--insecure"} {
			if r.code != 1 || !strings.Contains(r.stderr, want) {
				t.Errorf("pull: exit %d, stderr %q; want it to say %q", r.code, r.stderr, want)
			}
		}
		requireNothingPulled(t, root)
	})
	t.Run("insecure", func(t *testing.T) {
		pulledAs(t, mustRun(t, t.TempDir(), "pull", "--insecure", ref), ref, manifest)
	})
	t.Run("system store", func(t *testing.T) {
		t.Setenv("SSL_CERT_FILE", ca.cert)
		if out, err := skopeoInspect(); err != nil {
			t.Fatalf("skopeo inspect with the CA in SSL_CERT_FILE: %v, %s", err, out)
		}
		pulledAs(t, mustRun(t, t.TempDir(), "pull", ref), ref, manifest)
	})
	for _, dir := range []string{"/etc/docker/certs.d", "/etc/containers/certs.d"} {
		// A subtest named by a path could not be chosen with -run.
		t.Run(filepath.Base(filepath.Dir(dir)), func(t *testing.T) {
			requireRoot(t)
			trustCA(t, dir, reg.host, ca.cert)
			if out, err := skopeoInspect(); err != nil {
				t.Fatalf("skopeo inspect with the CA in %s: %v, %s", dir, err, out)
			}
			pulledAs(t, mustRun(t, t.TempDir(), "pull", ref), ref, manifest)
		})
	}
}

// trustCA puts the CA in dir/HOST/ca.crt, where docker and podman look
// for a registry's own CA, and removes what it made when the test ends.
func trustCA(t *testing.T, dir, host, ca string) {
	t.Helper()
	made := filepath.Join(dir, host)
	for parent := filepath.Dir(made); ; parent = filepath.Dir(parent) {
		if _, err := os.Stat(parent); err == nil {
			break
		}
		made = parent
	}
	if _, err := os.Stat(made); err == nil {
		t.Fatalf("%s is there already", made)
	}
	t.Cleanup(func() { os.RemoveAll(made) })
	data, err := os.ReadFile(ca)
	if err == nil {
		err = os.MkdirAll(filepath.Join(dir, host), 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, host, "ca.crt"), data, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// requireNothingPulled checks that a failed pull left no image, blob,
// layer or partial download in the store.
func requireNothingPulled(t *testing.T, root string) {
	t.Helper()
	for _, pattern := range []string{"blobs/sha256/*", "layers/sha256/*", "tmp/*"} {
		if found, _ := filepath.Glob(filepath.Join(root, pattern)); len(found) > 0 {
			t.Errorf("a failed pull left %v", found)
		}
	}
	if images := mustRun(t, root, "images", "--quiet"); images != "" {
		t.Errorf("a failed pull left images: %q", images)
	}
}

// TestPullContainersAuth pulls from a registry asking for basic auth over
// TLS, as users' registries do, with the credentials where podman and
// skopeo keep them, in containers' auth.json ($REGISTRY_AUTH_FILE, else
// $XDG_RUNTIME_DIR/containers/auth.json), and where docker keeps them
// when $DOCKER_CONFIG is unset (~/.docker/config.json); skopeo reads the
// same files. Credentials refused are named by the file they came from.
func TestPullContainersAuth(t *testing.T) {
	// Built before HOME changes, which the Go toolchain reads.
	layerfsBin(t)
	ca := newTestCA(t)
	t.Setenv("SSL_CERT_FILE", ca.cert)
	reg := startRegistry(t, registryOptions{tls: ca, user: "puller", password: "s3cret"})
	img := randomImage(t, "small", 4<<10)
	ref := reg.host + "/layerfs/small:v1"
	push(t, img.layout, img.ref, ref, "--dest-creds=puller:s3cret")
	manifest := manifestOf(t, img.layout, img.ref).Digest
	authFile := func(dir, password string) string {
		t.Helper()
		path := filepath.Join(dir, "auth.json")
		data, err := json.Marshal(map[string]any{"auths": map[string]any{reg.host: map[string]string{"auth": basicAuth("puller", password)}}})
		if err == nil {
			err = os.MkdirAll(dir, 0o700)
		}
		if err == nil {
			err = os.WriteFile(path, data, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
		return path
	}
	// Nothing of this machine's: no credentials but the test's.
	isolate := func(t *testing.T) {
		dockerConfig(t, map[string]any{})
		t.Setenv("REGISTRY_AUTH_FILE", "")
		t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
		t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	}
	pulls := func(t *testing.T) {
		t.Helper()
		if out, err := exec.Command("skopeo", "inspect", "--raw", "docker://"+ref).CombinedOutput(); err != nil {
			t.Fatalf("skopeo inspect: %v, %s", err, out)
		}
		pulledAs(t, mustRun(t, t.TempDir(), "pull", ref), ref, manifest)
	}

	t.Run("REGISTRY_AUTH_FILE", func(t *testing.T) {
		isolate(t)
		t.Setenv("REGISTRY_AUTH_FILE", authFile(t.TempDir(), "s3cret"))
		pulls(t)
	})
	t.Run("XDG_RUNTIME_DIR", func(t *testing.T) {
		isolate(t)
		authFile(filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "containers"), "s3cret")
		pulls(t)
	})
	t.Run("HOME", func(t *testing.T) {
		isolate(t)
		t.Setenv("DOCKER_CONFIG", "")
		t.Setenv("HOME", t.TempDir())
		authFile(filepath.Join(os.Getenv("HOME"), ".docker"), "s3cret")
		must(t, os.Rename(filepath.Join(os.Getenv("HOME"), ".docker", "auth.json"), filepath.Join(os.Getenv("HOME"), ".docker", "config.json")))
		pulls(t)
	})
	t.Run("refused", func(t *testing.T) {
		isolate(t)
		wrong := authFile(t.TempDir(), "wrong")
		t.Setenv("REGISTRY_AUTH_FILE", wrong)
		if out, err := exec.Command("skopeo", "inspect", "--raw", "docker://"+ref).CombinedOutput(); err == nil || !strings.Contains(string(out), "unauthorized") {
			t.Errorf("skopeo inspect with wrong credentials: %v, %s", err, out)
		}
		root := t.TempDir()
		r := run(t, root, "pull", ref)
		if want := "registry " + reg.host + " refused the credentials for it in " + wrong; r.code != 1 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "401") {
			t.Errorf("pull: exit %d, stderr %q; want it to say %q and the 401", r.code, r.stderr, want)
		}
		requireNothingPulled(t, root)
	})
}

// TestPullTokenAuth pulls from a registry with token auth, as docker.io
// has: the credentials go to its token server (realm), whose token the
// registry takes, as skopeo's do. No credentials, or wrong ones, the
// token server refuses, and the pull says which, with nothing stored.
func TestPullTokenAuth(t *testing.T) {
	tokens := startTokenServer(t, "puller", "s3cret")
	reg := startRegistry(t, registryOptions{token: tokens})
	img := randomImage(t, "small", 4<<10)
	ref := reg.host + "/layerfs/small:v1"
	push(t, img.layout, img.ref, ref, "--dest-creds=puller:s3cret")
	if out, err := exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", "--creds=puller:s3cret", "docker://"+ref).CombinedOutput(); err != nil {
		t.Fatalf("skopeo inspect: %v, %s", err, out)
	}
	refused := func(t *testing.T, want string) {
		t.Helper()
		root := t.TempDir()
		r := run(t, root, "pull", ref)
		if r.code != 1 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, tokens.realm) {
			t.Errorf("pull: exit %d, stderr %q; want it to say %q and name the token server", r.code, r.stderr, want)
		}
		requireNothingPulled(t, root)
	}
	t.Run("none", func(t *testing.T) {
		dockerConfig(t, map[string]any{})
		t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(t.TempDir(), "auth.json"))
		refused(t, "registry "+reg.host+" asks for credentials and none are stored for it")
	})
	t.Run("wrong", func(t *testing.T) {
		dockerConfig(t, map[string]any{"auths": map[string]any{reg.host: map[string]string{"auth": basicAuth("puller", "wrong")}}})
		refused(t, "registry "+reg.host+" refused the credentials for it in "+filepath.Join(os.Getenv("DOCKER_CONFIG"), "config.json"))
	})
	t.Run("right", func(t *testing.T) {
		dockerConfig(t, map[string]any{"auths": map[string]any{reg.host: map[string]string{"auth": basicAuth("puller", "s3cret")}}})
		before := tokens.issued.Load()
		pulledAs(t, mustRun(t, t.TempDir(), "pull", ref), ref, manifestOf(t, img.layout, img.ref).Digest)
		if tokens.issued.Load() == before {
			t.Error("the pull took no token of the token server")
		}
	})
}

// TestPullThroughHTTPProxy pulls by a name only an HTTP proxy reaches, as
// HTTPS_PROXY and HTTP_PROXY name one, so that the registry is no
// loopback one to layerfs: over TLS, verified against its CA, through a
// CONNECT tunnel, as skopeo reads it; not through the proxy when NO_PROXY
// names the host. A certificate not valid for the name asked is refused
// saying so, and a registry answering plain HTTP is refused pointing to
// --insecure, as skopeo refuses both, and pulled with --insecure.
func TestPullThroughHTTPProxy(t *testing.T) {
	ca := newTestCA(t)
	t.Setenv("SSL_CERT_FILE", ca.cert)
	img := randomImage(t, "small", 4<<10)
	manifest := manifestOf(t, img.layout, img.ref).Digest
	proxied := func(t *testing.T, opts registryOptions, name string) (*registryProxy, string) {
		reg := startRegistry(t, opts)
		push(t, img.layout, img.ref, reg.host+"/layerfs/small:v1")
		proxy := startRegistryProxy(t, reg.host)
		t.Setenv("HTTPS_PROXY", proxy.url)
		t.Setenv("HTTP_PROXY", proxy.url)
		t.Setenv("NO_PROXY", "")
		return proxy, name + ":" + strings.Split(reg.host, ":")[1] + "/layerfs/small:v1"
	}
	skopeoInspect := func(ref string) (string, error) {
		out, err := exec.Command("skopeo", "inspect", "--raw", "docker://"+ref).CombinedOutput()
		return string(out), err
	}
	refused := func(t *testing.T, ref string, args []string, wants ...string) {
		t.Helper()
		root := t.TempDir()
		r := run(t, root, append([]string{"pull"}, append(args, ref)...)...)
		for _, want := range append(wants, ref) {
			if r.code != 1 || !strings.Contains(r.stderr, want) {
				t.Errorf("pull: exit %d, stderr %q; want it to say %q", r.code, r.stderr, want)
			}
		}
		requireNothingPulled(t, root)
	}

	t.Run("tls", func(t *testing.T) {
		proxy, ref := proxied(t, registryOptions{tls: ca}, proxiedName)
		if out, err := skopeoInspect(ref); err != nil {
			t.Fatalf("skopeo inspect through the proxy: %v, %s", err, out)
		}
		pulledAs(t, mustRun(t, t.TempDir(), "pull", ref), ref, manifest)
		if proxy.tunnels.Load() < 2 {
			t.Errorf("%d CONNECT tunnels for skopeo and pull, want one each at least", proxy.tunnels.Load())
		}
		t.Setenv("NO_PROXY", proxiedName)
		refused(t, ref, nil, "registry "+strings.Split(ref, "/")[0]+" unreachable")
	})
	t.Run("wrong name", func(t *testing.T) {
		_, ref := proxied(t, registryOptions{tls: ca}, "other.test")
		if out, err := skopeoInspect(ref); err == nil || !strings.Contains(out, "not other.test") {
			t.Errorf("skopeo inspect by a name the certificate is not for: %v, %s", err, out)
		}
		refused(t, ref, nil, "the TLS certificate of "+strings.Split(ref, "/")[0]+" is not valid", "not other.test", "--insecure")
	})
	t.Run("plain http", func(t *testing.T) {
		proxy, ref := proxied(t, registryOptions{}, proxiedName)
		if out, err := skopeoInspect(ref); err == nil || !strings.Contains(out, "HTTP response to HTTPS client") {
			t.Errorf("skopeo inspect of a plain HTTP registry: %v, %s", err, out)
		}
		refused(t, ref, nil, "answers plain HTTP, not HTTPS", "--insecure")
		pulledAs(t, mustRun(t, t.TempDir(), "pull", "--insecure", ref), ref, manifest)
		if proxy.forwards.Load() == 0 {
			t.Error("the plain HTTP pull went around the proxy")
		}
	})
}
