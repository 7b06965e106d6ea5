package store

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/layerfs/layerfs/store/index"
	"github.com/layerfs/layerfs/store/layer"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
)

// OpenLayer opens the index of an extracted layer.
func (s *Store) OpenLayer(d digest.Digest) (stack.Layer, error) {
	if err := checkDigest(d); err != nil {
		return stack.Layer{}, fmt.Errorf("layer %q: %w", d, err)
	}
	r, err := s.openIndex(d, false)
	if err != nil {
		if os.IsNotExist(err) {
			return stack.Layer{}, fmt.Errorf("layer %s: %w: not extracted", d, ErrNotFound)
		}
		return stack.Layer{}, fmt.Errorf("layer %s: %w: %v", d, ErrCorrupt, err)
	}
	return stack.Layer{Digest: d, Index: r}, nil
}

// OpenView opens layers (lowest first) as one view of the given kind:
// for a Target, t.Digests(), and view.Merged, or view.Single when
// t.Single (one layer, as it was built). The view maps the layers'
// indexes until its Close; a layer not extracted is ErrNotFound (see
// Prepare). The view's files' contents are opened through the store
// (OpenObject, OpenHandles), so close the view first.
func (s *Store) OpenView(layers []digest.Digest, kind view.Kind) (*stack.View, error) {
	var opened []stack.Layer
	closeAll := func() {
		for _, l := range opened {
			l.Index.Close()
		}
	}
	for _, d := range layers {
		l, err := s.OpenLayer(d)
		if err != nil {
			closeAll()
			return nil, err
		}
		opened = append(opened, l)
	}
	v, err := stack.New(opened, kind)
	if err != nil {
		closeAll()
		return nil, err
	}
	return v, nil
}

// checkLowerLinks refuses an image whose layer hardlinks to a file that
// is in neither that layer nor the view beneath it (rule R7).
func (s *Store) checkLowerLinks(layers []ocispec.Descriptor) error {
	digests := make([]digest.Digest, len(layers))
	for i, l := range layers {
		digests[i] = l.Digest
	}
	v, err := s.OpenView(digests, view.Merged)
	if err != nil {
		return err
	}
	defer v.Close()
	for k, l := range v.Layers {
		err := l.Index.Scan(func(rec uint32, t index.Type) error {
			if t != index.TypeLowerLink {
				return nil
			}
			if err := v.ResolveLowerLink(stack.Ref{Layer: k, Rec: rec}); err != nil {
				p, _ := l.Index.Path(rec)
				return fmt.Errorf("layer %s: %w", l.Digest, &layer.EntryError{Entry: p, Err: err})
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// LayerInfo describes one layer of the store.
type LayerInfo struct {
	Digest         digest.Digest `json:"digest"`
	MediaType      string        `json:"mediaType,omitempty"`
	DiffID         digest.Digest `json:"diffID,omitempty"`
	CompressedSize int64         `json:"compressedSize"`
	Extracted      bool          `json:"extracted"`
	ContentBytes   int64         `json:"contentBytes"`
	Entries        int           `json:"entries"`
	Images         []string      `json:"images"`
}

// Layers describes every layer an image uses or that has an index.
func (s *Store) Layers() ([]LayerInfo, error) {
	images, err := s.Images()
	if err != nil {
		return nil, err
	}
	byDigest := map[digest.Digest]*LayerInfo{}
	var order []digest.Digest
	get := func(d digest.Digest) *LayerInfo {
		if li := byDigest[d]; li != nil {
			return li
		}
		li := &LayerInfo{Digest: d, Images: []string{}}
		byDigest[d] = li
		order = append(order, d)
		return li
	}
	for _, img := range images {
		err := s.eachImageLayer(img, func(l ocispec.Descriptor, diffID digest.Digest) {
			li := get(l.Digest)
			li.MediaType, li.DiffID, li.CompressedSize = l.MediaType, diffID, l.Size
			if !slices.Contains(li.Images, imageLabel(img)) {
				li.Images = append(li.Images, imageLabel(img))
			}
		})
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", imageLabel(img), err)
		}
	}
	bare, err := s.bareLayers()
	if err != nil {
		return nil, err
	}
	for _, l := range bare {
		get(l.Digest).MediaType = l.MediaType
	}
	// A directory of a layer no image uses is listed only once it holds
	// something: an interrupted extraction leaves an empty one.
	for _, d := range s.knownLayers() {
		if s.Extracted(d) || s.HasBlob(d) {
			get(d)
		}
	}
	out := make([]LayerInfo, 0, len(order))
	for _, d := range order {
		li := byDigest[d]
		switch l, err := s.OpenLayer(d); {
		case err == nil:
			info := l.Index.Info()
			li.Extracted, li.Entries, li.ContentBytes, li.DiffID = true, info.Entries, info.ContentBytes, info.DiffID
			l.Index.Close()
		case !errors.Is(err, ErrNotFound):
			// Listed as not extracted, but never silently: verify names
			// the same damage, and a mount of it would fail.
			logrus.Warn(err)
		}
		if st, err := os.Stat(s.BlobPath(d)); err == nil {
			li.CompressedSize = st.Size()
		}
		out = append(out, *li)
	}
	return out, nil
}
