package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/layerfs/layerfs/internal/procstat"
	"github.com/opencontainers/go-digest"
)

// leasesDir holds one file per live view (a mount, a virtio-fs server, or
// a build or export reading one) naming what it serves. They live in the store, not in a user's runtime
// directory, so that gc finds every view of the store whoever runs it.
const leasesDir = "leases"

// Lease is a live view's hold on what it serves: while its process runs,
// gc keeps the blobs, layer indexes and objects it names, and rm refuses
// to remove its image without --force. A lease of a process that is gone
// holds nothing, and gc removes it.
type Lease struct {
	PID int `json:"pid"`
	// Start is the process's start time, so that a reused pid does not
	// keep a dead view's lease alive.
	Start uint64 `json:"start"`
	// View names the view: a mountpoint, or a virtio-fs socket.
	View     string          `json:"view"`
	Manifest digest.Digest   `json:"manifest,omitempty"`
	Blobs    []digest.Digest `json:"blobs"`
	Layers   []digest.Digest `json:"layers"`
	// Source is set for a kernel mount (mount --kernel), which no process
	// serves: its lease also lives while this namespace's mount table
	// shows an overlayfs mount at View with this source.
	Source string `json:"source,omitempty"`
	// Meta is the key of the metadata-only image a kernel mount uses.
	Meta string `json:"meta,omitempty"`
	// Reads is set for a command that reads the view through once
	// (build, export), View naming where it writes: gc keeps what it
	// reads, but rm is not refused for it, since nothing serves the view
	// once the command ends.
	Reads bool `json:"reads,omitempty"`
}

func (l Lease) live(mounts []procstat.Mount) bool {
	if procstat.Running(l.PID, l.Start) {
		return true
	}
	for _, m := range mounts {
		if l.Source != "" && m.Mountpoint == l.View && m.FSType == "overlay" && m.Source == l.Source {
			return true
		}
	}
	return false
}

// Lease records that this process serves t as view (a mountpoint, a
// socket: what "layerfs rm" names when it refuses to remove t's image),
// until release is called or the process ends. It is taken while writers
// are admitted, so a gc that starts after it sees it, and one already
// running has finished (waited for until ctx is done). Each call is a
// lease of its own: a process may hold several, and releasing one leaves
// the others. In a store this user may read but not write it fails
// (os.ErrPermission, or EROFS on a read-only filesystem); layerfs then
// serves without a lease, warning that a gc by the store's owner may
// remove what it serves.
func (s *Store) Lease(ctx context.Context, t Target, view string) (release func(), err error) {
	return s.lease(ctx, t, view, false)
}

// LeaseReading records that this process reads t, writing it to out
// (a file, or any name saying what reads it), until release is called or
// the process ends: a gc meanwhile keeps what it has still to read, even
// if the image is removed, and rm is not refused for it.
func (s *Store) LeaseReading(ctx context.Context, t Target, out string) (release func(), err error) {
	return s.lease(ctx, t, out, true)
}

func (s *Store) lease(ctx context.Context, t Target, view string, reads bool) (release func(), err error) {
	l, err := s.newLease(t, view)
	if err != nil {
		return nil, err
	}
	l.Reads = reads
	return s.writeLease(ctx, t, l, leaseName("", l))
}

// leaseSeq numbers the leases this process takes.
var leaseSeq atomic.Uint64

// leaseName is the file of a new lease l, one of its own for each lease
// a process takes: a program holding two views (two mounts, a build
// beside a mount) keeps both held, and releasing one leaves the other.
func leaseName(prefix string, l Lease) string {
	return fmt.Sprintf("%s%d-%d-%d.json", prefix, l.PID, l.Start, leaseSeq.Add(1))
}

// newLease is this process's lease of t served as view.
func (s *Store) newLease(t Target, view string) (Lease, error) {
	start, err := procstat.StartTime(os.Getpid())
	if err != nil {
		return Lease{}, fmt.Errorf("lease: %w", err)
	}
	l := Lease{PID: os.Getpid(), Start: start, View: view, Manifest: t.Manifest.Digest, Layers: t.Digests()}
	l.Blobs = append(l.Blobs, l.Layers...)
	if l.Manifest != "" {
		m, _, err := s.ImageLayers(l.Manifest)
		if err != nil {
			return Lease{}, fmt.Errorf("lease %s: %w", t, err)
		}
		l.Blobs = append(l.Blobs, l.Manifest, m.Config.Digest)
	}
	return l, nil
}

// writeLease records l in the leases directory under name.
func (s *Store) writeLease(ctx context.Context, t Target, l Lease, name string) (release func(), err error) {
	data, err := json.Marshal(l)
	if err != nil {
		return nil, err
	}
	unlock, err := s.Writing(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.verifyLeased(l); err != nil {
		return nil, fmt.Errorf("lease %s: %w", t, err)
	}
	rel := filepath.Join(leasesDir, name)
	if err := s.writeFile(rel, data); err != nil {
		return nil, fmt.Errorf("lease %s: %w", t, err)
	}
	return func() { os.Remove(s.path(rel)) }, nil
}

// verifyLeased checks that a gc that ran before the lease was taken left
// what it names in place.
func (s *Store) verifyLeased(l Lease) error {
	if l.Manifest != "" && !s.HasBlob(l.Manifest) {
		return fmt.Errorf("manifest %s: %w (removed by gc meanwhile?)", l.Manifest, ErrNotFound)
	}
	for _, d := range l.Layers {
		if !s.Extracted(d) {
			return fmt.Errorf("layer %s: %w (removed by gc meanwhile?)", d, ErrNotFound)
		}
	}
	if l.Meta != "" {
		if _, err := s.readMetaRecord(l.Meta); err != nil {
			return fmt.Errorf("%w (removed by gc meanwhile?)", err)
		}
	}
	return nil
}

// Leases returns the leases of live views, and the files of the leases
// whose process is gone.
func (s *Store) Leases() (live []Lease, stale []string, err error) {
	entries, err := os.ReadDir(s.path(leasesDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("leases: %w", err)
	}
	mounts, err := procstat.Mounts()
	if err != nil {
		return nil, nil, fmt.Errorf("leases: %w", err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		rel := filepath.Join(leasesDir, e.Name())
		var l Lease
		data, err := s.readSmallFile(rel)
		if err == nil {
			err = json.Unmarshal(data, &l)
		}
		if err != nil || !l.live(mounts) {
			stale = append(stale, s.path(rel))
			continue
		}
		live = append(live, l)
	}
	return live, stale, nil
}

// ViewsOf returns the live views serving image manifest, leaving out
// commands that only read it through.
func (s *Store) ViewsOf(manifest digest.Digest) ([]Lease, error) {
	live, _, err := s.Leases()
	if err != nil {
		return nil, err
	}
	var out []Lease
	for _, l := range live {
		if l.Manifest == manifest && !l.Reads {
			out = append(out, l)
		}
	}
	return out, nil
}

// ErrInUse is wrapped by the refusal to remove an image a live view
// serves.
var ErrInUse = errors.New("in use")

// CheckNotServed refuses img when a live view serves it and no other
// name keeps its manifest, as docker refuses to remove an image a
// container uses.
func (s *Store) CheckNotServed(img Image) error {
	images, err := s.Images()
	if err != nil {
		return err
	}
	for _, other := range images {
		if other.Name != img.Name && other.Manifest.Digest == img.Manifest.Digest {
			return nil
		}
	}
	var where []string
	for _, p := range img.Platforms {
		t, err := s.imageTarget(img, p)
		if err != nil {
			return err
		}
		views, err := s.ViewsOf(t.Manifest.Digest)
		if err != nil {
			return err
		}
		for _, v := range views {
			if v.Source != "" {
				where = append(where, v.View+" (kernel mount)")
				continue
			}
			where = append(where, fmt.Sprintf("%s (pid %d)", v.View, v.PID))
		}
	}
	if len(where) == 0 {
		return nil
	}
	return fmt.Errorf("image %q is %w: served at %s; unmount it first, or rm --force (the view keeps working, and gc frees the image once it ends)",
		img.Name, ErrInUse, strings.Join(where, ", "))
}
