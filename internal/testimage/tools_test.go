package testimage

import (
	"runtime"
	"testing"
)

// outcome records how RequireTool ended a test without ending this one.
type outcome struct {
	testing.TB
	failed, skipped bool
}

func (o *outcome) Helper() {}

func (o *outcome) Fatalf(string, ...any) {
	o.failed = true
	runtime.Goexit()
}

func (o *outcome) Skipf(string, ...any) {
	o.skipped = true
	runtime.Goexit()
}

func TestRequireToolMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	for _, c := range []struct {
		env           string
		failed, skips bool
	}{{"1", true, false}, {"", false, true}, {"0", false, true}} {
		t.Setenv("LAYERFS_INTEGRATION", c.env)
		o := &outcome{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			RequireTool(o, "no-such-tool-for-layerfs")
		}()
		<-done
		if o.failed != c.failed || o.skipped != c.skips {
			t.Errorf("LAYERFS_INTEGRATION=%q: failed %v skipped %v, want %v %v", c.env, o.failed, o.skipped, c.failed, c.skips)
		}
	}
}
