package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// roundTripCalls is how many llistxattr calls one measure of a round trip
// times.
const roundTripCalls = 5000

// roundTrip is what one request the kernel caches no answer to costs on
// this machine, in seconds per call: an llistxattr of a view's root,
// through layerfs and fuse-overlayfs (a FUSE round trip each) and on
// kernel overlayfs (no round trip), medians of the bench's runs.
type roundTrip struct {
	layerfs, fuseOverlay, kernel float64
}

// measureRoundTrip times roundTripCalls llistxattr calls of img's root on
// each system, warm, the systems taking turns as in every case.
func (b *bench) measureRoundTrip(img *image) (roundTrip, error) {
	perCall := func(sys system) measure {
		timed := b.mountRun(sys, img, false, listxattrLoop)
		return func() (float64, error) {
			v, err := timed()
			return v / roundTripCalls, err
		}
	}
	rows, err := b.runCase(benchCase{name: "round trip", layerfs: perCall(layerfsRoot), refs: []ref{
		{name: fuseOverlay.name, measure: perCall(fuseOverlay)},
		{name: kernelOverlay.name, measure: perCall(kernelOverlay)},
	}})
	if err != nil {
		return roundTrip{}, fmt.Errorf("round trip: %w", err)
	}
	return roundTrip{layerfs: rows[0].layerfs, fuseOverlay: rows[0].refValue, kernel: rows[1].refValue}, nil
}

func listxattrLoop(dir string) error {
	buf := make([]byte, 4096)
	for range roundTripCalls {
		if _, err := unix.Llistxattr(dir, buf); err != nil {
			return fmt.Errorf("llistxattr %s: %w", dir, err)
		}
	}
	return nil
}

// line says what a round trip costs, for the requests table.
func (rt roundTrip) line() string {
	return fmt.Sprintf("One request the kernel caches no answer to (llistxattr of the view's root, %d calls, median of the runs): %.1f µs through layerfs, %.1f µs through fuse-overlayfs, %.1f µs on kernel overlayfs.",
		roundTripCalls, rt.layerfs*1e6, rt.fuseOverlay*1e6, rt.kernel*1e6)
}

// cost is what n requests cost beyond what kernel overlayfs pays for the
// same calls, at an idle machine's round trip.
func (rt roundTrip) cost(n uint64) float64 {
	return float64(n) * (rt.layerfs - rt.kernel)
}
