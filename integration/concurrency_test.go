package integration

import (
	"bytes"
	"os/exec"
	"regexp"
	"sync"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
)

var extractedLine = regexp.MustCompile(`msg="layer extracted" layer="(sha256:[0-9a-f]{64})"`)

// TestConcurrentImports runs several imports of the same and of different
// images (sharing a layer) at once, each twice, with gc running in a loop beside them.
// Every import succeeds, each distinct layer is extracted by exactly one
// of them, gc never takes what they write or have committed, and the store
// ends up holding exactly what one clean import of both images holds.
func TestConcurrentImports(t *testing.T) {
	requireRoot(t)
	a := writeFaultLayout(t, faultImage("conc/a", 5, testimage.Gzip))
	b := writeFaultLayout(t, faultImage("conc/b", 6, testimage.Gzip))
	clean := tmpfsDir(t, 256<<20)
	mustRun(t, clean, "import", a, b)
	mustRun(t, clean, "gc")
	want := storeFiles(t, clean)
	layerCount := len(extractedLine.FindAllStringSubmatch(run(t, tmpfsDir(t, 256<<20), "--log-level", "debug", "import", a, b).stderr, -1))

	root := tmpfsDir(t, 256<<20)
	sources := []string{a, a, a, b, b, b}
	logs := make([]bytes.Buffer, len(sources))
	errs := make([]error, len(sources))
	var wg sync.WaitGroup
	done, stopGC := make(chan struct{}), make(chan struct{})
	gcs := 0
	go func() {
		defer close(done)
		for {
			r := run(t, root, "gc")
			if r.code != 0 {
				t.Errorf("gc beside the imports: %s", r.stderr)
				return
			}
			gcs++
			select {
			case <-stopGC:
				return
			default:
			}
		}
	}()
	for i, src := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Twice, so that gc gets in between imports too.
			for range 2 {
				cmd := exec.Command(layerfsBin(t), "--root", root, "--log-level", "debug", "import", src)
				cmd.Stderr = &logs[i]
				if errs[i] = cmd.Run(); errs[i] != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stopGC)
	<-done
	times := map[string]int{}
	for i, err := range errs {
		if err != nil {
			t.Errorf("import %d of %s: %v\n%s", i, sources[i], err, logs[i].String())
		}
		for _, m := range extractedLine.FindAllStringSubmatch(logs[i].String(), -1) {
			times[m[1]]++
		}
	}
	if len(times) != layerCount {
		t.Errorf("%d layers extracted, want %d: %v", len(times), layerCount, times)
	}
	for l, n := range times {
		if n != 1 {
			t.Errorf("layer %s extracted %d times", l, n)
		}
	}
	checkStore(t, root, "after concurrent imports")
	for _, name := range []string{"conc/a", "conc/b"} {
		mustRun(t, root, "verify", name)
	}
	mustRun(t, root, "gc")
	sameFiles(t, "concurrent imports, then gc", want, storeFiles(t, root))
	t.Logf("%d imports at once (%d distinct layers, each extracted once) beside %d gc runs", len(sources), layerCount, gcs)
}
