package store

import (
	"bufio"
	"fmt"
	"io"
	"os"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ImportLayer stores a bare layer tar, plain or compressed, with no image
// around it: it is listed by Layers, mountable by digest, and kept by gc
// through an entry of the store's index.json of a layer media type.
func (s *Store) ImportLayer(file string) (ocispec.Descriptor, error) {
	release, err := s.Writing()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer release()
	desc, err := describeLayerFile(file)
	if err != nil {
		return desc, fmt.Errorf("import layer %s: %w", file, err)
	}
	err = s.ExtractLayer(desc, "", func() (io.ReadCloser, error) {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		return limitedBlob{io.LimitReader(f, desc.Size+1), f}, nil
	})
	if err != nil {
		return desc, fmt.Errorf("import layer %s: %w", file, err)
	}
	return desc, s.keepLayer(desc)
}

// describeLayerFile hashes a layer file and names its media type from
// its magic bytes.
func describeLayerFile(file string) (ocispec.Descriptor, error) {
	f, err := os.Open(file)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if !st.Mode().IsRegular() {
		return ocispec.Descriptor{}, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	br := bufio.NewReader(io.LimitReader(f, st.Size()))
	mediaType := ocispec.MediaTypeImageLayer
	switch sniffCompression(br) {
	case "gzip":
		mediaType = ocispec.MediaTypeImageLayerGzip
	case "zstd":
		mediaType = ocispec.MediaTypeImageLayerZstd
	case "":
	default:
		return ocispec.Descriptor{}, fmt.Errorf("layers compressed with %s are not supported (gzip and zstd are)", sniffCompression(br))
	}
	d, err := digest.FromReader(br)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: st.Size()}, nil
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
		if !isManifest(m.MediaType) && !isIndex(m.MediaType) {
			out = append(out, m)
		}
	}
	return out, nil
}
