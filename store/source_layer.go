package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/layerfs/layerfs/internal/compression"
	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/store/index"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ImportLayer stores a bare layer tar, plain or compressed, with no image
// around it: it is listed by Layers, mountable by digest, and kept by gc
// through an entry of the store's index.json of a layer media type.
func (s *Store) ImportLayer(ctx context.Context, file string) (ocispec.Descriptor, error) {
	release, err := s.Writing(ctx)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer release()
	// A FIFO or a device would block the open or never end.
	st, err := os.Stat(file)
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("a %s, not a layer tar file", output.Kind(st.Mode()))
	}
	// As GNU tar refuses it: no tar writes nothing at all, so an empty
	// file is most likely a failed write or download.
	if err == nil && st.Size() == 0 {
		err = errors.New("the file is empty (0 bytes), not a tar stream; the tar of an empty layer is 1024 zero bytes")
	}
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("import layer %s: %w", file, err)
	}
	desc, err := DescribeLayerFile(os.DirFS(filepath.Dir(file)), filepath.Base(file), "")
	if err != nil {
		return desc, fmt.Errorf("import layer %s: %w", file, err)
	}
	err = s.ExtractLayer(ctx, desc, "", func() (io.ReadCloser, error) {
		return OpenLimited(os.DirFS(filepath.Dir(file)), filepath.Base(file), desc.Size)
	})
	if err != nil {
		return desc, fmt.Errorf("import layer %s: %w", file, err)
	}
	return desc, s.keepLayer(desc)
}

// ArchiveMarks are the names at layer d's root that an image archive has
// at its own (an OCI layout's oci-layout, a docker-archive's
// manifest.json): a layer stored from such a file was most likely meant
// to be imported as images.
func (s *Store) ArchiveMarks(d digest.Digest) ([]string, error) {
	r, err := s.openIndex(d, false)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", d, err)
	}
	defer r.Close()
	var marks []string
	for _, name := range []string{"oci-layout", "manifest.json"} {
		_, found, err := r.Lookup(index.Root, name)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", d, err)
		}
		if found {
			marks = append(marks, name)
		}
	}
	return marks, nil
}

// describeLayer describes a layer of size bytes read from r, its media
// type told by its magic bytes. An uncompressed layer's digest is its
// diff_id, so it is hashed only when diffID is not known.
func describeLayer(r io.Reader, size int64, diffID digest.Digest) (ocispec.Descriptor, error) {
	br := bufio.NewReader(io.LimitReader(r, size))
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: diffID, Size: size}
	switch kind := compression.Sniff(br); kind {
	case "gzip":
		desc.MediaType = ocispec.MediaTypeImageLayerGzip
	case "zstd":
		desc.MediaType = ocispec.MediaTypeImageLayerZstd
	case "":
		if diffID != "" {
			return desc, nil
		}
	default:
		return desc, fmt.Errorf("layers compressed with %s are not supported (gzip and zstd are)", kind)
	}
	d, err := digest.FromReader(br)
	if err != nil {
		return desc, err
	}
	desc.Digest = d
	return desc, nil
}

// keepLayer records a bare layer in the store's index.json.
func (s *Store) keepLayer(desc ocispec.Descriptor) error {
	return s.updateIndex(func(idx *ocispec.Index) error {
		for _, m := range idx.Manifests {
			if m.Digest == desc.Digest {
				return nil
			}
		}
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size})
		return nil
	})
}

// bareLayers lists the layers imported with no image.
func (s *Store) bareLayers() ([]ocispec.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	var out []ocispec.Descriptor
	for _, m := range idx.Manifests {
		if !IsManifest(m.MediaType) && !IsIndex(m.MediaType) {
			out = append(out, m)
		}
	}
	return out, nil
}

// RemoveBareLayer forgets the bare layer d, as Untag forgets an image:
// gc then frees it once no image and no live view uses it. A layer a live
// view serves is refused unless force, as rm of an image is.
func (s *Store) RemoveBareLayer(d digest.Digest, force bool) error {
	// Whether d is a bare layer comes first: a layer of images is refused
	// as that, naming them, whether a view serves it or not, so that
	// unmounting it is never asked for in vain.
	bare, err := s.bareLayers()
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(bare, func(b ocispec.Descriptor) bool { return b.Digest == d }) {
		return s.notBare(d)
	}
	if !force {
		live, _, err := s.Leases()
		if err != nil {
			return err
		}
		var where []string
		for _, l := range live {
			if slices.Contains(l.Layers, d) && !l.Reads {
				where = append(where, fmt.Sprintf("%s (pid %d)", l.View, l.PID))
			}
		}
		if len(where) > 0 {
			return fmt.Errorf("layer %s is %w: served at %s; unmount it first, or rm --force (the view keeps working, and gc frees the layer once it ends)",
				d, ErrInUse, strings.Join(where, ", "))
		}
	}
	return s.updateIndex(func(idx *ocispec.Index) error {
		kept := idx.Manifests[:0]
		for _, m := range idx.Manifests {
			if m.Digest != d || IsManifest(m.MediaType) || IsIndex(m.MediaType) {
				kept = append(kept, m)
			}
		}
		if len(kept) == len(idx.Manifests) {
			return fmt.Errorf("%w as a bare layer: %s, which another rm removed meanwhile", ErrNotFound, d)
		}
		idx.Manifests = kept
		return nil
	})
}

// notBare is the refusal to remove layer d as a bare layer when it is
// none, naming the images it is a layer of.
func (s *Store) notBare(d digest.Digest) error {
	layers, err := s.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		if l.Digest == d && len(l.Images) > 0 {
			names := make([]string, len(l.Images))
			for i, n := range l.Images {
				names[i] = output.Name(n)
			}
			return fmt.Errorf("%w as a bare layer: %s was not imported on its own (import --layer) but as a layer of %s; rm the images that use it", ErrNotFound, d, strings.Join(names, ", "))
		}
	}
	return fmt.Errorf("%w as a bare layer: %s was not imported on its own (import --layer)", ErrNotFound, d)
}

// limitedBlob reads at most one byte more than a blob's declared size, so
// a blob that goes on (a symlink to a device, a file still growing) is
// found out as too long instead of read forever.
type limitedBlob struct {
	io.Reader
	io.Closer
}

// OpenLimited opens blob name of fsys, of size bytes, as a limitedBlob.
func OpenLimited(fsys fs.FS, name string, size int64) (io.ReadCloser, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	return limitedBlob{io.LimitReader(f, max(size, 0)+1), f}, nil
}

// DescribeLayerFile describes a layer file, of a docker-archive or bare.
func DescribeLayerFile(fsys fs.FS, name string, diffID digest.Digest) (ocispec.Descriptor, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return describeLayer(f, st.Size(), diffID)
}
