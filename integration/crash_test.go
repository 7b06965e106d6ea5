package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
)

// killAt starts layerfs with args and SIGKILLs it after delay. It reports
// whether the kill landed, that is, the command was still running, and
// how long the command ran.
func killAt(t *testing.T, root string, delay time.Duration, args ...string) (landed bool, ran time.Duration) {
	t.Helper()
	cmd := exec.Command(layerfsBin(t), append([]string{"--root", root}, args...)...)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("layerfs %s failed before the kill: %v", strings.Join(args, " "), err)
		}
		return false, time.Since(start)
	case <-time.After(delay):
	}
	cmd.Process.Signal(syscall.SIGKILL)
	err := <-done
	// The command may have ended between the timer and the signal.
	ee, ok := err.(*exec.ExitError)
	return ok && ee.Sys().(syscall.WaitStatus).Signaled(), time.Since(start)
}

// timed runs layerfs to completion and returns how long it took.
func timed(t *testing.T, root string, args ...string) time.Duration {
	t.Helper()
	layerfsBin(t) // built before the clock starts
	start := time.Now()
	mustRun(t, root, args...)
	return time.Since(start)
}

// killWindow draws the random points at which a test stops a command.
// It starts from one measure of a whole run; every run that ends before
// its signal measures it again, and the shortest measure wins, so that one
// slow measure (a cold cache, writeback, a busy machine) cannot push most
// signals past the command's end.
type killWindow struct {
	rng *rand.Rand
	run time.Duration
}

func newKillWindow(run time.Duration) *killWindow {
	return &killWindow{rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 6)), run: run}
}

// point is uniform over the whole run, and a little past its usual end.
func (w *killWindow) point() time.Duration {
	return time.Duration(w.rng.Int64N(int64(w.run) * 11 / 10))
}

// ended records a run that finished before its signal.
func (w *killWindow) ended(ran time.Duration) { w.run = min(w.run, ran) }

// killUntil kills the command at random points of its run until it has
// killed it n times, calling after once after every kill that landed. It
// returns the number of kills that landed and of runs that finished first.
func killUntil(t *testing.T, n int, d time.Duration, run func(delay time.Duration) (landed bool, ran time.Duration), after func(kill int)) (killed, finished int) {
	w := newKillWindow(d)
	for killed < n && killed+finished < 4*n {
		landed, ran := run(w.point())
		if landed {
			killed++
			after(killed)
			continue
		}
		finished++
		w.ended(ran)
	}
	if killed < n {
		t.Fatalf("only %d of %d kills landed while the command ran (%d runs finished first, the shortest in %v)", killed, n, finished, w.run)
	}
	return killed, finished
}

// TestCrashImport kills `layerfs import` at random points, over an OCI
// layout and a docker-archive by turns. After every kill the store
// verifies and every index in it is complete; rerunning the import
// completes; and after gc the store holds exactly the files, of exactly
// the sizes, that a clean import of the same source leaves.
func TestCrashImport(t *testing.T) {
	requireRoot(t)
	layout := writeFaultLayout(t, faultImage("crash/layout", 1, testimage.Gzip))
	archive := filepath.Join(t.TempDir(), "docker.tar")
	if err := testimage.WriteDockerArchive(archive, []string{"crash/archive:1"}, faultImage("", 2, testimage.None)); err != nil {
		t.Fatal(err)
	}
	sources := []struct {
		path, name string
		clean      map[string]int64
		took       time.Duration
	}{{path: layout, name: "crash/layout"}, {path: archive, name: "docker.io/crash/archive:1"}}
	for i := range sources {
		clean := tmpfsDir(t, 256<<20)
		sources[i].took = timed(t, clean, "import", sources[i].path)
		mustRun(t, clean, "gc")
		sources[i].clean = storeFiles(t, clean)
		t.Logf("clean import of %s: %v, %d files, %d bytes", filepath.Base(sources[i].path), sources[i].took, len(sources[i].clean), totalSize(sources[i].clean))
	}
	root := tmpfsDir(t, 256<<20)
	var turn int
	killed, finished := killUntil(t, 32, sources[0].took, func(delay time.Duration) (bool, time.Duration) {
		turn++
		src := sources[turn%2]
		// Both sources take about as long; scale to the one run.
		scale := float64(src.took) / float64(sources[0].took)
		landed, ran := killAt(t, root, time.Duration(float64(delay)*scale), "import", src.path)
		if !landed {
			mustRun(t, root, "rm", src.name)
			mustRun(t, root, "gc")
		}
		return landed, time.Duration(float64(ran) / scale)
	}, func(kill int) {
		src := sources[turn%2]
		checkStore(t, root, "after kill")
		if r := run(t, root, "layers"); r.code != 0 {
			t.Fatalf("layers after a kill: %s", r.stderr)
		}
		mustRun(t, root, "import", src.path)
		checkStore(t, root, "after the rerun")
		mustRun(t, root, "gc")
		sameFiles(t, "rerun after a kill, then gc", src.clean, storeFiles(t, root))
		mustRun(t, root, "rm", src.name)
		mustRun(t, root, "gc")
	})
	t.Logf("import: %d kills survived (%d runs finished before their kill)", killed, finished)
}

// TestCrashGC kills `layerfs gc` at random points while it frees an image
// that was removed: the image kept must verify after every kill, and a
// rerun of gc must leave exactly what a clean import of it leaves.
func TestCrashGC(t *testing.T) {
	requireRoot(t)
	kept := writeFaultLayout(t, faultImage("kept", 3, testimage.Gzip))
	dropped := writeFaultLayout(t, faultImage("dropped", 4, testimage.Gzip))
	clean := tmpfsDir(t, 256<<20)
	mustRun(t, clean, "import", kept)
	mustRun(t, clean, "gc")
	want := storeFiles(t, clean)

	root := tmpfsDir(t, 256<<20)
	mustRun(t, root, "import", kept)
	prepare := func() {
		mustRun(t, root, "import", dropped)
		mustRun(t, root, "rm", "dropped")
	}
	prepare()
	start := time.Now()
	mustRun(t, root, "gc")
	took := time.Since(start)
	prepare()
	killed, finished := killUntil(t, 30, took, func(delay time.Duration) (bool, time.Duration) {
		landed, ran := killAt(t, root, delay, "gc")
		if !landed {
			prepare()
		}
		return landed, ran
	}, func(int) {
		checkStore(t, root, "after a killed gc")
		mustRun(t, root, "gc")
		sameFiles(t, "gc rerun after a kill", want, storeFiles(t, root))
		prepare()
	})
	t.Logf("gc: %d kills survived (%d runs finished before their kill), gc takes %v", killed, finished, took)
}

// TestCrashPull kills `layerfs pull` at random points of a pull from a
// real registry. After every kill the store verifies and every index in
// it is complete; pulling again completes, resuming what was staged; and
// after gc the store holds exactly what a clean pull leaves.
func TestCrashPull(t *testing.T) {
	requireRoot(t)
	layout := writeFaultLayout(t, faultImage("crash/pull", 5, testimage.Gzip))
	reg := startRegistry(t, registryOptions{})
	ref := reg.host + "/crash/pull:1"
	push(t, layout, "crash/pull", ref)
	clean := tmpfsDir(t, 256<<20)
	took := timed(t, clean, "pull", "--quiet", ref)
	mustRun(t, clean, "gc")
	want := storeFiles(t, clean)
	t.Logf("clean pull: %v, %d files, %d bytes", took, len(want), totalSize(want))

	root := tmpfsDir(t, 256<<20)
	killed, finished := killUntil(t, 30, took, func(delay time.Duration) (bool, time.Duration) {
		landed, ran := killAt(t, root, delay, "pull", "--quiet", ref)
		if !landed {
			mustRun(t, root, "rm", ref)
			mustRun(t, root, "gc")
		}
		return landed, ran
	}, func(int) {
		checkStore(t, root, "after kill")
		mustRun(t, root, "pull", "--quiet", ref)
		checkStore(t, root, "after the rerun")
		mustRun(t, root, "gc")
		sameFiles(t, "pull again after a kill, then gc", want, storeFiles(t, root))
		mustRun(t, root, "rm", ref)
		mustRun(t, root, "gc")
	})
	t.Logf("pull: %d kills survived (%d runs finished before their kill)", killed, finished)
}

// TestCrashOutput kills `export -o` at random points over a file of the
// user's, and `build -o` over a new name. After every kill the
// directory holds exactly what it held before, or, when the kill came
// after the rename, the complete output a clean run writes: nothing
// beside the target, and never a part of the output under its name.
func TestCrashOutput(t *testing.T) {
	requireRoot(t)
	root, _ := importedDebian(t)
	ref := debianImage(t).Ref
	const mine = "the user's own file\n"
	for _, c := range []struct {
		name, file string
		existing   bool
	}{
		{"export", "rootfs.tar", true},
		{"build", "rootfs.erofs", false},
	} {
		t.Run(fmt.Sprintf("%s/existing=%v", c.name, c.existing), func(t *testing.T) {
			dir := t.TempDir()
			target := filepath.Join(dir, c.file)
			args := []string{c.name, ref, "-o", target}
			timed(t, root, args...) // the first run reads the store cold
			took := timed(t, root, args...)
			clean, err := os.ReadFile(target)
			must(t, err)
			reset := func() {
				must(t, os.Remove(target))
				if c.existing {
					must(t, os.WriteFile(target, []byte(mine), 0o644))
				}
			}
			reset()
			killed, finished := killUntil(t, 10, took, func(delay time.Duration) (bool, time.Duration) {
				landed, ran := killAt(t, root, delay, args...)
				if !landed {
					reset()
				}
				return landed, ran
			}, func(int) {
				es, err := os.ReadDir(dir)
				must(t, err)
				var names []string
				for _, e := range es {
					names = append(names, e.Name())
				}
				b, err := os.ReadFile(target)
				switch {
				case len(names) > 1 || len(names) == 1 && names[0] != c.file:
					t.Fatalf("a killed %s left %q in the directory of its -o", c.name, names)
				case errors.Is(err, fs.ErrNotExist) && !c.existing:
				case err != nil:
					t.Fatal(err)
				case c.existing && string(b) == mine:
				case bytes.Equal(b, clean):
				default:
					t.Fatalf("a killed %s left %d bytes under its -o name, neither what was there nor its whole output (%d bytes)", c.name, len(b), len(clean))
				}
				if _, err := os.Lstat(target); err == nil {
					reset()
				} else if c.existing {
					t.Fatalf("a killed %s removed the user's file: %v", c.name, err)
				}
			})
			t.Logf("%s: %d kills (%d runs finished before their kill), a run takes %v", c.name, killed, finished, took)
		})
	}
}
