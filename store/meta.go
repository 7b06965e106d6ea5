package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/layerfs/layerfs/view"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// metaDir holds the metadata-only EROFS images of mount --kernel: for each
// view, KEY.erofs and its record KEY.json (docs/erofs.md). They are a
// cache: built from the layers' indexes, rebuilt when missing or damaged.
const metaDir = "meta"

// metaFormat is the version of what erofs.BuildMeta writes for a view. It
// is part of every image's key, so that a layerfs whose writer changed
// never mounts an image of the old one; gc removes images of other
// formats.
const metaFormat = 6

// MetaImage is the record of one cached metadata-only image: the view it
// shows and the image's own digest and size.
type MetaImage struct {
	Format int             `json:"format"`
	Kind   string          `json:"kind"`
	Layers []digest.Digest `json:"layers"`
	Digest digest.Digest   `json:"digest"`
	Size   int64           `json:"size"`
}

// NewMetaImage is the record, still without digest and size, of the view
// of layers (lowest first) of the given kind.
func NewMetaImage(layers []digest.Digest, kind view.Kind) MetaImage {
	return MetaImage{Format: metaFormat, Kind: kind.String(), Layers: layers}
}

// Key names the image in meta/: the sha256 of its format, kind and
// layers, so one view has one image in any store.
func (m MetaImage) Key() string {
	var b strings.Builder
	fmt.Fprintf(&b, "layerfs-meta %d %s\n", m.Format, m.Kind)
	for _, l := range m.Layers {
		b.WriteString(l.String() + "\n")
	}
	sum := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(sum[:])
}

func (m MetaImage) sameView(o MetaImage) bool {
	return m.Format == o.Format && m.Kind == o.Kind && slices.Equal(m.Layers, o.Layers)
}

func metaImageRel(key string) string  { return filepath.Join(metaDir, key+".erofs") }
func metaRecordRel(key string) string { return filepath.Join(metaDir, key+".json") }

// OpenMeta opens the cached image of the view m names, after checking it
// against its record: its size, then its sha256. It is ErrNotFound when
// there is none, and wraps ErrMismatch when the image is damaged.
func (s *Store) OpenMeta(m MetaImage) (*os.File, MetaImage, error) {
	key := m.Key()
	rec, err := s.readMetaRecord(key)
	if err != nil {
		return nil, rec, err
	}
	if !rec.sameView(m) {
		return nil, rec, fmt.Errorf("meta image %s: its record names another view: %w", key, ErrMismatch)
	}
	f, err := s.openRegular(metaImageRel(key))
	if errors.Is(err, os.ErrNotExist) {
		return nil, rec, fmt.Errorf("meta image %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, rec, fmt.Errorf("meta image %s: %w", key, err)
	}
	if err := checkMeta(f, rec); err != nil {
		f.Close()
		return nil, rec, fmt.Errorf("meta image %s: %w", key, err)
	}
	return f, rec, nil
}

// checkMeta compares the open image f with its record.
func checkMeta(f *os.File, rec MetaImage) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != rec.Size {
		return fmt.Errorf("%w: %d bytes, want %d", ErrMismatch, st.Size(), rec.Size)
	}
	v := rec.Digest.Verifier()
	if _, err := io.Copy(v, io.NewSectionReader(f, 0, rec.Size)); err != nil {
		return err
	}
	if !v.Verified() {
		return ErrMismatch
	}
	return nil
}

func (s *Store) readMetaRecord(key string) (MetaImage, error) {
	var rec MetaImage
	data, err := s.readSmallFile(metaRecordRel(key))
	if errors.Is(err, os.ErrNotExist) {
		return rec, fmt.Errorf("meta image %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return rec, fmt.Errorf("meta image %s: %w", key, err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return rec, fmt.Errorf("meta image %s: record: %w: %v", key, ErrCorrupt, err)
	}
	if err := rec.Digest.Validate(); err != nil {
		return rec, fmt.Errorf("meta image %s: record: %w: %v", key, ErrCorrupt, err)
	}
	return rec, nil
}

// PutMeta writes the image of the view m names with write, which gets a
// new temp file in the store and returns the image's digest and size,
// then commits it as the store commits everything: fsync, rename, fsync
// the directory; its record goes last, so an image without one is never
// taken. It returns the committed image opened, and its record. The
// store is held for writing meanwhile, so gc leaves the temp file alone.
func (s *Store) PutMeta(ctx context.Context, m MetaImage, write func(*os.File) (digest.Digest, int64, error)) (*os.File, MetaImage, error) {
	key := m.Key()
	release, err := s.Writing(ctx)
	if err != nil {
		return nil, m, fmt.Errorf("meta image %s: %w", key, err)
	}
	defer release()
	tmp, err := os.CreateTemp(s.path(tmpDir), "meta-*")
	if err != nil {
		return nil, m, fmt.Errorf("meta image %s: %w", key, err)
	}
	abort := func(err error) (*os.File, MetaImage, error) {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, m, fmt.Errorf("meta image %s: %w", key, err)
	}
	if m.Digest, m.Size, err = write(tmp); err != nil {
		return abort(err)
	}
	if err := tmp.Sync(); err != nil {
		return abort(err)
	}
	final := s.path(metaImageRel(key))
	if err := os.MkdirAll(filepath.Dir(final), dirMode); err != nil {
		return abort(err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return abort(err)
	}
	if err := syncPath(filepath.Dir(final)); err != nil {
		tmp.Close()
		return nil, m, err
	}
	data, err := json.Marshal(m)
	if err == nil {
		err = s.writeFile(metaRecordRel(key), data)
	}
	if err != nil {
		tmp.Close()
		return nil, m, fmt.Errorf("meta image %s: %w", key, err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		tmp.Close()
		return nil, m, err
	}
	return tmp, m, nil
}

// metaEntries lists the names in meta/; none when there is no meta/.
func (s *Store) metaEntries() ([]string, error) {
	d, err := s.openBeneath(metaDir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

// unusedMeta lists the files of meta/ gc removes: an image no live
// kernel mount leases whose layers are not all kept (layers) or whose
// format is not this layerfs's, a record of no image and an image of no
// record, and whatever else is there.
func (s *Store) unusedMeta(layers map[digest.Digest]bool, leases []Lease) ([]string, error) {
	names, err := s.metaEntries()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.path(metaDir), err)
	}
	leased := map[string]bool{}
	for _, l := range leases {
		if l.Meta != "" {
			leased[l.Meta] = true
		}
	}
	have := map[string]bool{}
	for _, n := range names {
		have[n] = true
	}
	keep := func(key string) bool {
		if leased[key] {
			return true
		}
		if !have[key+".erofs"] || !have[key+".json"] {
			return false
		}
		rec, err := s.readMetaRecord(key)
		if err != nil || rec.Format != metaFormat || rec.Key() != key {
			return false
		}
		for _, l := range rec.Layers {
			if !layers[l] {
				return false
			}
		}
		return true
	}
	var out []string
	for _, n := range names {
		key := strings.TrimSuffix(strings.TrimSuffix(n, ".erofs"), ".json")
		if !keep(key) {
			out = append(out, filepath.Join(s.path(metaDir), n))
		}
	}
	return out, nil
}

// verifyMeta checks every cached image (of the views of layer stacks
// when stacks is not nil) against its record.
func (s *Store) verifyMeta(stacks [][]digest.Digest) (checked int, problems []Problem, err error) {
	names, err := s.metaEntries()
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", s.path(metaDir), err)
	}
	for _, n := range names {
		key, ok := strings.CutSuffix(n, ".json")
		if !ok {
			continue
		}
		rec, err := s.readMetaRecord(key)
		if err == nil && stacks != nil && !containsStack(stacks, rec.Layers) {
			continue
		}
		checked++
		if err == nil {
			var f *os.File
			if f, err = s.openRegular(metaImageRel(key)); err == nil {
				err = checkMeta(f, rec)
				f.Close()
			}
		}
		if err != nil {
			problems = append(problems, Problem{What: "meta image", ID: key,
				Err: fmt.Errorf("%w; the next mount --kernel of its view rebuilds it", err)})
		}
	}
	return checked, problems, nil
}

func containsStack(stacks [][]digest.Digest, layers []digest.Digest) bool {
	for _, st := range stacks {
		if slices.Equal(st, layers) {
			return true
		}
	}
	return false
}

// LeaseKernel records that this process mounts t at mountpoint in the
// kernel, with source as the mount table shows it, using the image of
// key: the lease lives while this process runs, then for as long as the
// mount is there (Lease.Source). release removes it, for a mount that
// failed.
func (s *Store) LeaseKernel(ctx context.Context, t Target, mountpoint, source, key string) (release func(), err error) {
	l, err := s.newLease(t, mountpoint)
	if err != nil {
		return nil, err
	}
	l.Source, l.Meta = source, key
	return s.writeLease(ctx, t, l, leaseName("kernel-", l))
}
