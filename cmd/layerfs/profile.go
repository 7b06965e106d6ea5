package main

import (
	"os"
	"runtime/pprof"

	"github.com/sirupsen/logrus"
)

// startProfiles starts the profiles that LAYERFS_CPUPROFILE and
// LAYERFS_MEMPROFILE ask for, of a mount's server or of a build, and
// returns what writes them, at unmount or when the build ends.
// They are undocumented on purpose: `make bench` profiles its worst case
// with them.
func startProfiles() (stop func()) {
	cpuPath, memPath := os.Getenv("LAYERFS_CPUPROFILE"), os.Getenv("LAYERFS_MEMPROFILE")
	var cpu *os.File
	if cpuPath != "" {
		f, err := os.Create(cpuPath)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			logrus.Warnf("cpu profile %s: %v", cpuPath, err)
		} else {
			cpu = f
		}
	}
	return func() {
		if cpu != nil {
			pprof.StopCPUProfile()
			cpu.Close()
		}
		if memPath == "" {
			return
		}
		// No forced GC: the in-use figures are those of the last cycle,
		// taken while the mount was busy, not after it emptied.
		f, err := os.Create(memPath)
		if err == nil {
			err = pprof.WriteHeapProfile(f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			logrus.Warnf("heap profile %s: %v", memPath, err)
		}
	}
}
