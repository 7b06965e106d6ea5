package main

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/source/registry"
	"github.com/layerfs/layerfs/store"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sys/unix"
)

// progress shows one bar per layer on a terminal, else one log line per
// layer when it is done. It follows pull's downloads (registry.Progress) and
// the extractions of pull and import (store.ExtractObserver).
type progress struct {
	quiet bool
	mu    sync.Mutex
	bars  *mpb.Progress
	log   *logrus.Logger
	// pulled are the layers pull shows, whose bars go on to show their
	// extraction.
	pulled map[digest.Digest]*layerProgress
}

func newProgress(quiet bool) *progress {
	p := &progress{quiet: quiet || !isTerminal(os.Stderr), log: logrus.New(), pulled: map[digest.Digest]*layerProgress{}}
	p.log.SetOutput(os.Stderr)
	p.log.SetFormatter(logrus.StandardLogger().Formatter)
	// These lines are the command's output on stderr, not diagnostics:
	// only --log-level error silences them.
	p.log.SetLevel(max(logrus.InfoLevel, logrus.GetLevel()))
	if logrus.GetLevel() <= logrus.ErrorLevel {
		p.log.SetLevel(logrus.ErrorLevel)
	}
	return p
}

// tell writes a line of what a command says to a person on stderr:
// its output there, not a diagnostic, so only --log-level error silences
// it, as it does the progress bars. What it names may come from an
// image (an artifact's type), so it is escaped as errors are.
func tell(format string, args ...any) {
	if logrus.GetLevel() >= logrus.WarnLevel {
		fmt.Fprintln(os.Stderr, output.Printable(fmt.Sprintf(format, args...)))
	}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// wait ends the bars of one image, so the next image gets its own.
func (p *progress) wait() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bars != nil {
		p.bars.Wait()
		p.bars = nil
		logrus.SetOutput(os.Stderr)
	}
	clear(p.pulled)
}

// addBar adds a bar of total bytes, named by the layer's short digest,
// with status after the counters; p.mu is held.
func (p *progress) addBar(d digest.Digest, total int64, status func() string) *mpb.Bar {
	if p.bars == nil {
		p.bars = mpb.New(mpb.WithOutput(os.Stderr), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond))
		// Logs print above the bars instead of through them.
		logrus.SetOutput(p.bars)
	}
	// A bar made with no total completes only when told, not when its
	// count reaches the size: pull's bar counts again while extracting.
	bar := p.bars.AddBar(0,
		mpb.PrependDecorators(decor.Name(shortDigest(d.Encoded())+" ", decor.WC{W: 14, C: decor.DindentRight})),
		mpb.AppendDecorators(
			decor.CountersKibiByte("% .1f / % .1f", decor.WC{W: 22}),
			decor.AverageSpeed(decor.SizeB1024(0), "  % .1f", decor.WC{W: 14}),
			decor.Any(func(decor.Statistics) string { return "  " + status() }),
		))
	bar.SetTotal(total, false)
	return bar
}

func (p *progress) Layer(ref string, desc ocispec.Descriptor, have bool) registry.LayerProgress {
	l := &layerProgress{p: p, ref: ref, desc: desc, start: time.Now()}
	if have {
		l.status.Store("in store")
	} else {
		l.status.Store("waiting")
	}
	if p.quiet {
		return l
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	l.bar = p.addBar(desc.Digest, desc.Size, l.statusLine)
	if have {
		l.bar.SetCurrent(desc.Size)
	}
	p.pulled[desc.Digest] = l
	return l
}

// Extracting shows an extraction: on the bar of the layer pull fetched,
// or on a bar of its own for import.
func (p *progress) Extracting(desc ocispec.Descriptor) store.ExtractMeter {
	if p.quiet {
		return &layerProgress{p: p, desc: desc, start: time.Now()}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.pulled[desc.Digest]; l != nil {
		l.extracting.Store(true)
		l.status.Store("extracting")
		l.bar.SetCurrent(0)
		return pulledExtraction{l}
	}
	l := &layerProgress{p: p, desc: desc, start: time.Now()}
	l.extracting.Store(true)
	l.status.Store("extracting")
	l.bar = p.addBar(desc.Digest, desc.Size, l.statusLine)
	return l
}

func shortDigest(hex string) string { return hex[:min(12, len(hex))] }

// layerProgress follows one layer, as registry.LayerProgress while it is
// fetched and as store.ExtractMeter while it is extracted.
type layerProgress struct {
	p      *progress
	ref    string
	desc   ocispec.Descriptor
	bar    *mpb.Bar
	status atomic.Value
	start  time.Time
	// fetching is when the download began (UnixNano), after any wait
	// for a download slot: the first Set.
	fetching   atomic.Int64
	bytes      atomic.Int64
	resume     atomic.Int64
	extracting atomic.Bool
	entries    atomic.Int64
}

func (l *layerProgress) statusLine() string {
	st := l.status.Load().(string)
	if l.extracting.Load() {
		return fmt.Sprintf("%s, %d entries", st, l.entries.Load())
	}
	return st
}

func (l *layerProgress) Set(have int64) {
	l.fetching.CompareAndSwap(0, time.Now().UnixNano())
	l.bytes.Store(have)
	l.resume.Store(have)
	if have > 0 {
		l.status.Store("resuming")
	} else {
		l.status.Store("fetching")
	}
	if l.bar != nil {
		l.bar.SetCurrent(have)
	}
}

func (l *layerProgress) Add(n int) {
	l.bytes.Add(int64(n))
	if l.bar != nil {
		l.bar.IncrBy(n)
	}
}

func (l *layerProgress) Fetched() { l.status.Store("extracting") }

// Read counts bytes of the blob extracted.
func (l *layerProgress) Read(n int) {
	if l.bar != nil {
		l.bar.IncrBy(n)
	}
}

// Entry counts one tar entry extracted.
func (l *layerProgress) Entry() { l.entries.Add(1) }

// pulledExtraction is the extraction of a layer pull fetched: pull ends
// its bar.
type pulledExtraction struct{ *layerProgress }

func (pulledExtraction) Done(error) {}

// Done ends a fetch (pull) or an extraction (import).
func (l *layerProgress) Done(err error) {
	if err != nil {
		l.status.Store("failed")
	} else if l.status.Load() != "in store" {
		l.status.Store("done")
	}
	if l.bar != nil {
		l.bar.SetTotal(-1, true)
		return
	}
	if !l.p.quiet || l.ref == "" {
		return
	}
	if err != nil {
		// The command's error names every layer that failed, and an
		// interrupt is said once, for every layer.
		return
	}
	fields := logrus.Fields{"image": l.ref, "layer": l.desc.Digest, "size": l.desc.Size}
	if st := l.status.Load(); st == "in store" {
		l.p.log.WithFields(fields).Info("layer already in the store")
		return
	}
	fields["fetched"] = l.bytes.Load() - l.resume.Load()
	fields["resumed"] = l.resume.Load()
	// took is the download and extraction; waited the time the layer
	// waited for one of --jobs download slots before it.
	began := l.start
	if ns := l.fetching.Load(); ns != 0 {
		began = time.Unix(0, ns)
	}
	fields["waited"] = began.Sub(l.start).Round(time.Millisecond)
	fields["took"] = time.Since(began).Round(time.Millisecond)
	l.p.log.WithFields(fields).Info("layer pulled")
}
