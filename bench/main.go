// Command bench measures layerfs against its references in one run: kernel
// overlayfs and fuse-overlayfs over the same layers unpacked by GNU tar,
// umoci unpack and tar -xzf. It builds its corpus (a real Debian image and
// synthetic ones), runs every case several times, alternating between
// layerfs and the references, and writes the medians and their ratios as a
// table on stdout, results.md, results.csv and results.png.
//
// It needs root: it drops caches, mounts overlayfs and runs the
// unprivileged cases through setpriv.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

func main() {
	var (
		bin   = flag.String("layerfs", "bin/layerfs", "path of the built layerfs binary")
		out   = flag.String("out", "bench/results", "directory the results are written to")
		runs  = flag.Int("runs", 5, "runs of each case and reference")
		sel   = flag.String("cases", "", "regexp: run only the cases whose name matches")
		cache = flag.String("cache", filepath.Join(os.TempDir(), "layerfs-bench"), "directory the corpus is cached in")
		quick = flag.Bool("quick", false, "a small corpus, for trying the program out")
	)
	flag.Parse()
	logrus.SetOutput(os.Stderr)
	if err := mainErr(*bin, *out, *cache, *sel, *runs, *quick); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func mainErr(bin, out, cache, sel string, runs int, quick bool) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: it drops caches and mounts overlayfs")
	}
	if runs < 1 {
		return fmt.Errorf("-runs %d: want at least 1", runs)
	}
	pick, err := regexp.Compile(sel)
	if err != nil {
		return fmt.Errorf("-cases: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, cleanup, err := setup(bin, out, cache, runs, quick)
	if err != nil {
		return err
	}
	defer cleanup()

	start := time.Now()
	if b.corpus, err = b.buildCorpus(ctx); err != nil {
		return fmt.Errorf("corpus: %w", err)
	}
	logrus.WithField("took", time.Since(start).Round(time.Second)).Info("corpus ready")

	var rows []row
	var picked []benchCase
	var requests []requestRow
	for _, c := range b.cases() {
		if !pick.MatchString(c.name) {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		caseStart := time.Now()
		rs, err := b.runCase(c)
		if err != nil {
			return fmt.Errorf("case %s: %w", c.name, err)
		}
		logrus.WithFields(logrus.Fields{"case": c.name, "took": time.Since(caseStart).Round(time.Second)}).Info("case done")
		rows = append(rows, rs...)
		picked = append(picked, c)
		if c.counted != nil {
			rr, err := b.countRequests(c)
			if err != nil {
				return err
			}
			for _, r := range rs {
				if r.ref == kernelOverlay.name {
					rr.gap = r.layerfs - r.refValue
				}
			}
			requests = append(requests, rr)
		}
	}
	if len(rows) == 0 {
		return fmt.Errorf("-cases %q matches no case", sel)
	}
	var rt roundTrip
	if len(requests) > 0 {
		if rt, err = b.measureRoundTrip(b.corpus.debian); err != nil {
			return err
		}
	}
	prof, err := b.profileWorst(picked, rows)
	if err != nil {
		return err
	}
	r := &report{rows: rows, date: time.Now().UTC(), machine: machine(), runs: runs, profile: prof, took: time.Since(start), requests: requests, rt: rt}
	r.table(os.Stdout)
	return r.write(out)
}

// setup makes the scratch directory and a copy of the binary that the
// unprivileged user can run, and lets that user open /dev/fuse.
func setup(bin, out, cache string, runs int, quick bool) (*bench, func(), error) {
	for _, d := range []string{out, cache} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, nil, err
		}
	}
	// Everything nobody touches must be reachable by nobody.
	if err := os.Chmod(cache, 0o755); err != nil {
		return nil, nil, err
	}
	work, err := os.MkdirTemp(cache, "work-")
	if err != nil {
		return nil, nil, err
	}
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, nil, err
	}
	copied := filepath.Join(work, "layerfs")
	if err := copyFile(bin, copied, 0o755); err != nil {
		return nil, nil, fmt.Errorf("-layerfs: %w", err)
	}
	st, err := os.Stat("/dev/fuse")
	if err != nil {
		return nil, nil, fmt.Errorf("no FUSE: %w", err)
	}
	mode := st.Mode().Perm()
	if err := os.Chmod("/dev/fuse", 0o666); err != nil {
		return nil, nil, err
	}
	cleanup := func() {
		if err := os.Chmod("/dev/fuse", mode); err != nil {
			logrus.Warnf("restore mode of /dev/fuse: %v", err)
		}
		if err := os.RemoveAll(work); err != nil {
			logrus.Warnf("remove %s: %v", work, err)
		}
	}
	outAbs, err := filepath.Abs(out)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return &bench{bin: copied, cache: cache, work: work, out: outAbs, runs: runs, quick: quick}, cleanup, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// runCase measures layerfs and each reference c.runs times, starting each
// run with the next of them in turn so that none always runs first, and
// returns one row per reference.
func (b *bench) runCase(c benchCase) ([]row, error) {
	runs := c.runs
	if runs == 0 {
		runs = b.runs
	}
	measures := []measure{c.layerfs}
	for _, r := range c.refs {
		measures = append(measures, r.measure)
	}
	values := make([][]float64, len(measures))
	for i := 0; i < runs; i++ {
		for k := range measures {
			j := (i + k) % len(measures)
			v, err := measures[j]()
			if err != nil {
				return nil, err
			}
			values[j] = append(values[j], v)
		}
	}
	lf := median(values[0])
	if len(c.refs) == 0 {
		return []row{{c: c, layerfs: lf, samples: values[0], target: *c.abs, value: lf}}, nil
	}
	var rows []row
	for i, r := range c.refs {
		ref := median(values[i+1])
		rows = append(rows, row{c: c, layerfs: lf, samples: values[0], ref: r.name, refValue: ref, refSamples: values[i+1], target: r.target, value: lf / ref, ratio: true})
	}
	return rows, nil
}

func median(vs []float64) float64 {
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// profileWorst runs layerfs once more in the case that misses its target
// by the most (or, all met, comes closest to it) among those that run a
// server, with the server writing CPU and heap profiles. It returns the
// profiles' path prefix, relative to the output directory.
func (b *bench) profileWorst(cases []benchCase, rows []row) (string, error) {
	var worst *row
	for i := range rows {
		r := &rows[i]
		if r.c.server && (worst == nil || r.target.missBy(r.value) > worst.target.missBy(worst.value)) {
			worst = r
		}
	}
	if worst == nil {
		return "", nil
	}
	dir := filepath.Join(b.out, "profiles")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	name := strings.ReplaceAll(worst.c.name, "/", "-")
	b.profile = filepath.Join(dir, name)
	defer func() { b.profile = "" }()
	for _, c := range cases {
		if c.name == worst.c.name {
			if _, err := c.layerfs(); err != nil {
				return "", fmt.Errorf("profile %s: %w", c.name, err)
			}
		}
	}
	logrus.WithField("case", worst.c.name).Info("profiled")
	return filepath.Join("profiles", name), nil
}

// machine describes where the figures were measured.
func machine() string {
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(data), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf(", %d GiB", (kb+(1<<19))>>20)
		}
	}
	var u syscall.Utsname
	kernel := ""
	if syscall.Uname(&u) == nil {
		kernel = ", Linux " + utsString(u.Release[:])
	}
	return fmt.Sprintf("%s, %d cores%s%s", cpu, runtime.NumCPU(), mem, kernel)
}

func utsString(cs []int8) string {
	var sb strings.Builder
	for _, c := range cs {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}
