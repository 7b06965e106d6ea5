package main

import (
	"encoding/csv"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// row is one line of the results: a case against one reference, or a case
// against its absolute target.
type row struct {
	c          benchCase
	layerfs    float64
	samples    []float64
	ref        string
	refValue   float64
	refSamples []float64
	ratio      bool // value is layerfs over the reference
	value      float64
	target     target
}

func (r row) met() bool { return r.target.met(r.value) }

func (r row) result() string {
	if r.met() {
		return "pass"
	}
	return fmt.Sprintf("miss (x%.2f)", r.target.missBy(r.value))
}

func (r row) cells() []string {
	refName, refValue, ratio, spread := "-", "-", "-", "-"
	if r.ratio {
		refName, refValue, ratio, spread = r.ref, figure(r.refValue, r.c.unit), fmt.Sprintf("%.2f", r.value), r.runRatios()
	}
	return []string{r.c.name, r.c.title, figure(r.layerfs, r.c.unit), refName, refValue, ratio, spread, r.target.String(), r.result()}
}

// runRatios is the lowest and the highest ratio of one run of layerfs to
// the run of the reference taken beside it: how far a single run's
// ratio strays from the ratio of the medians.
func (r row) runRatios() string {
	lo, hi := math.Inf(1), math.Inf(-1)
	for i := range min(len(r.samples), len(r.refSamples)) {
		x := r.samples[i] / r.refSamples[i]
		lo, hi = min(lo, x), max(hi, x)
	}
	if lo > hi {
		return "-"
	}
	return fmt.Sprintf("%.2f-%.2f", lo, hi)
}

var header = []string{"case", "what", "layerfs", "reference", "reference median", "ratio", "run ratios", "target", "result"}

func figure(v float64, unit string) string {
	switch {
	case unit == "s" && math.Abs(v) < 1:
		return fmt.Sprintf("%.1f ms", v*1000)
	case unit == "s":
		return fmt.Sprintf("%.2f s", v)
	case v >= 100:
		return fmt.Sprintf("%.0f %s", v, unit)
	}
	return fmt.Sprintf("%.3g %s", v, unit)
}

type report struct {
	rows     []row
	date     time.Time
	machine  string
	runs     int
	profile  string
	took     time.Duration
	requests []requestRow
	rt       roundTrip
}

func (r *report) summary() string {
	met := 0
	for _, x := range r.rows {
		if x.met() {
			met++
		}
	}
	return fmt.Sprintf("%d of %d targets met; medians of %d runs (fewer where noted), %s, on %s; the bench took %s",
		met, len(r.rows), r.runs, r.date.Format("2006-01-02"), r.machine, r.took.Round(time.Second))
}

func (r *report) table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, x := range r.rows {
		fmt.Fprintln(tw, strings.Join(x.cells(), "\t"))
	}
	tw.Flush()
	fmt.Fprintln(w, r.summary())
	requestTable(w, r.requests, r.rt)
}

func (r *report) write(dir string) error {
	if err := r.writeMarkdown(filepath.Join(dir, "results.md")); err != nil {
		return err
	}
	if err := r.writeCSV(filepath.Join(dir, "results.csv")); err != nil {
		return err
	}
	return r.plot(filepath.Join(dir, "results.png"))
}

func (r *report) writeMarkdown(path string) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# layerfs benchmark\n\n%s.\n\n", r.summary())
	sb.WriteString("| " + strings.Join(header, " | ") + " |\n")
	sb.WriteString(strings.Repeat("| --- ", len(header)) + "|\n")
	for _, x := range r.rows {
		sb.WriteString("| " + strings.Join(x.cells(), " | ") + " |\n")
	}
	sb.WriteString("\nRatios are layerfs over the reference: lower is better for times and sizes, higher for throughput. The ratio is of the medians; run ratios are the lowest and highest of each run of layerfs over the run of the reference beside it, which shows the machine's spread.\n")
	requestMarkdown(&sb, r.requests, r.rt)
	if r.profile != "" {
		fmt.Fprintf(&sb, "\nServer profiles of the case furthest from its target: `%s-cpu.pprof`, `%s-heap.pprof`.\n", r.profile, r.profile)
	}
	sb.WriteString("\n![ratios to the references](results.png)\n")
	return os.WriteFile(path, []byte(sb.String()), 0o644)
}

func (r *report) writeCSV(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	w.Write([]string{"case", "what", "unit", "layerfs_median", "layerfs_samples", "reference", "reference_median", "reference_samples", "ratio", "target_op", "target", "met", "date", "machine"})
	for _, x := range r.rows {
		ratio, refMedian := "", ""
		if x.ratio {
			ratio, refMedian = num(x.value), num(x.refValue)
		}
		w.Write([]string{x.c.name, x.c.title, x.c.unit, num(x.layerfs), nums(x.samples), x.ref, refMedian, nums(x.refSamples),
			ratio, x.target.op, num(x.target.value), strconv.FormatBool(x.met()), r.date.Format(time.RFC3339), r.machine})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

func num(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }

func nums(vs []float64) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = num(v)
	}
	return strings.Join(s, " ")
}

// plot draws one bar per row on a log scale: the ratio to the reference,
// or for a case without one its value over its target, with the target
// as a black line across the bar.
func (r *report) plot(path string) error {
	p := plot.New()
	p.Title.Text = "layerfs vs references, " + r.date.Format("2006-01-02")
	p.Y.Label.Text = "ratio to reference (no reference: to target)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	names := make([]string, len(r.rows))
	vals := make([]float64, len(r.rows))
	targets := make([]float64, len(r.rows))
	lo, hi := 1.0, 1.0
	for i, x := range r.rows {
		v, t := x.value, x.target.value
		if !x.ratio {
			v, t = v/t, 1
		}
		vals[i], targets[i] = math.Max(v, 1e-3), t
		lo, hi = math.Min(lo, math.Min(vals[i], t)), math.Max(hi, math.Max(vals[i], t))
		names[i] = x.c.name
		if x.ratio {
			names[i] += " vs " + shortRef(x.ref)
		}
	}
	// A log axis has no zero: bars rise from its bottom.
	base := lo / 2
	p.Y.Min, p.Y.Max = base, hi*2
	for i, x := range r.rows {
		x0, x1 := float64(i)-0.3, float64(i)+0.3
		bar, err := plotter.NewPolygon(plotter.XYs{{X: x0, Y: base}, {X: x0, Y: vals[i]}, {X: x1, Y: vals[i]}, {X: x1, Y: base}})
		if err != nil {
			return err
		}
		bar.LineStyle.Width = 0
		bar.Color = color.RGBA{R: 46, G: 139, B: 87, A: 255}
		if !x.met() {
			bar.Color = color.RGBA{R: 205, G: 55, B: 55, A: 255}
		}
		p.Add(bar)
		line, err := plotter.NewLine(plotter.XYs{{X: float64(i) - 0.4, Y: targets[i]}, {X: float64(i) + 0.4, Y: targets[i]}})
		if err != nil {
			return err
		}
		line.LineStyle.Width = vg.Points(2)
		p.Add(line)
	}
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = math.Pi / 2.5
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YCenter
	p.X.Tick.Label.Font.Size = vg.Points(8)
	return p.Save(vg.Length(max(160, 50+14*len(r.rows)))*vg.Millimeter, 160*vg.Millimeter, path)
}

func shortRef(s string) string {
	s, _, _ = strings.Cut(s, " of ")
	return s
}
