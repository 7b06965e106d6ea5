package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/procstat"
)

// rssKiB is the server's resident set in KiB.
func rssKiB(pid int) (int64, error) {
	b, err := procstat.RSS(pid)
	return b >> 10, err
}

// soakTime is how long TestSoak reads: $LAYERFS_SOAK (make soak), else a
// short run for CI.
func soakTime(t *testing.T) time.Duration {
	s := os.Getenv("LAYERFS_SOAK")
	if s == "" {
		return 30 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("LAYERFS_SOAK=%q: %v", s, err)
	}
	return d
}

// maxServerRSS bounds the server's resident set under the soak: the index
// is mapped, contents are passed through, so nothing grows with reads.
const maxServerRSS = 256 << 10 // KiB

// TestSoak has 16 readers walk and read the whole merged view of the
// Debian image again and again, each walk compared in full (attributes
// and the sha256 of every file) with kernel overlayfs over the same
// layers, while the kernel's dentry and inode caches are dropped every
// few seconds so that lookups keep reaching the server.
func TestSoak(t *testing.T) {
	requireRoot(t)
	img := debianLayoutImage(t)
	root := t.TempDir()
	importInto(t, root, img)
	want := oracleTree(t, img.blobs)
	mnt := t.TempDir()
	srv := serveLogged(t, root, mnt, img.ref)
	pid := srv.cmd.Process.Pid

	const readers = 16
	d := soakTime(t)
	start := time.Now()
	deadline := start.Add(d)
	stop := make(chan struct{})
	var bg sync.WaitGroup
	var drops atomic.Int64
	var peak atomic.Int64
	bg.Add(2)
	go func() {
		defer bg.Done()
		tick := time.NewTicker(3 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2\n"), 0); err != nil {
					t.Errorf("drop caches: %v", err)
					return
				}
				drops.Add(1)
			}
		}
	}()
	go func() {
		defer bg.Done()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss, err := rssKiB(pid); err == nil && rss > peak.Load() {
				peak.Store(rss)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	var walks atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, readers)
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Every reader finishes at least one whole walk, however
			// short the soak.
			for n := 0; n == 0 || time.Now().Before(deadline); n++ {
				got, err := oracle.Walk(mnt)
				if err != nil {
					errs[r] = fmt.Errorf("reader %d, walk %d: %w", r, n+1, err)
					return
				}
				if diff := oracle.Diff(want, got); len(diff) > 0 {
					errs[r] = fmt.Errorf("reader %d, walk %d: %d differences from overlayfs, first: %s", r, n+1, len(diff), diff[0])
					return
				}
				walks.Add(1)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(stop)
	bg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	end, err := rssKiB(pid)
	if err != nil || !srv.alive() {
		t.Fatalf("server gone after the soak: %v\n%s", err, srv.Log())
	}
	t.Logf("soak: %d readers x %v, %d whole walks of %d entries, caches dropped %d times; server RSS peak %d MiB, end %d MiB",
		readers, took.Round(time.Second), walks.Load(), len(want), drops.Load(), peak.Load()>>10, end>>10)
	if peak.Load() > maxServerRSS {
		t.Errorf("server RSS peaked at %d MiB, more than %d MiB", peak.Load()>>10, maxServerRSS>>10)
	}
	if strings.Contains(srv.Log(), "level=error") || strings.Contains(srv.Log(), "level=warn") {
		t.Errorf("server logged trouble:\n%s", srv.Log())
	}
}

// TestUnmountBusy unmounts a mount with a file open in it: a clear "busy"
// error that leaves it mounted and served, then success once it closes.
func TestUnmountBusy(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	mustRun(t, root, "import", "../testdata/sample")
	mnt := t.TempDir()
	srv := serveLogged(t, root, mnt, "sample")
	f, err := os.Open(filepath.Join(mnt, "etc", "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, root, "umount", mnt)
	if r.code != 1 || !strings.Contains(r.stderr, "busy") || !strings.HasPrefix(r.stderr, "layerfs: ") {
		t.Errorf("umount of a busy mount: exit %d, stderr %q; want 1 and a busy error", r.code, r.stderr)
	}
	if !mountedAt(t, mnt) || !srv.alive() {
		t.Fatal("a refused umount took the mount away")
	}
	if _, err := os.ReadFile(filepath.Join(mnt, "etc", "hostname")); err != nil {
		t.Errorf("mount not served after the refused umount: %v", err)
	}
	f.Close()
	mustRun(t, root, "umount", mnt)
	waitFor(t, "the server exits", func() bool { return !srv.alive() })
	if mountedAt(t, mnt) {
		t.Error("still mounted after umount succeeded")
	}
}
