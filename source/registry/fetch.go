package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/layerfs/layerfs/store"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/errcode"
)

const (
	// maxStalls is how many attempts in a row may fail without a byte of
	// progress before a blob fetch gives up; an attempt that brought bytes
	// resets the count, so a registry that keeps cutting connections
	// still gets the whole blob.
	maxStalls = 5
)

// errNoRange is a registry answering a Range request with anything but
// the part asked for.
var errNoRange = errors.New("registry cannot resume a blob (no Range support)")

// fetchBlob brings blob desc into the store through its partial file,
// resuming from what an earlier, interrupted fetch left there.
func fetchBlob(ctx context.Context, s *store.Store, repo *remote.Repository, desc ocispec.Descriptor, m Meter) error {
	for fresh := false; ; fresh = true {
		part, err := s.Partial(ctx, desc)
		if errors.Is(err, store.ErrHaveBlob) {
			return nil
		}
		if err != nil {
			return err
		}
		resumed := part.Size()
		if resumed > 0 {
			logrus.WithFields(logrus.Fields{"blob": desc.Digest, "have": resumed, "size": desc.Size}).Info("resuming blob")
		}
		m.Set(resumed)
		if err := fill(ctx, repo, desc, part, m); err != nil {
			// Keep what arrived: a later run resumes from it.
			part.Close()
			return err
		}
		err = part.Commit()
		if err == nil {
			return nil
		}
		// Bytes of an earlier run may be what was wrong: start over once.
		if !errors.Is(err, store.ErrMismatch) || resumed == 0 || fresh {
			return err
		}
		logrus.WithField("blob", desc.Digest).Warn("resumed blob did not verify; fetching it whole")
	}
}

// fill reads the rest of desc into part, retrying transient failures with
// backoff and resuming each time from the bytes already written.
func fill(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, part *store.Partial, m Meter) error {
	stalls := 0
	for {
		before := part.Size()
		err := fetchRest(ctx, repo, desc, part, m)
		if err == nil {
			return nil
		}
		if errors.Is(err, errNoRange) {
			logrus.WithFields(logrus.Fields{"blob": desc.Digest, "error": err}).Warn("starting the blob over")
			if err := part.Reset(); err != nil {
				return err
			}
			m.Set(0)
			continue
		}
		if ctx.Err() != nil || !transient(err) {
			return err
		}
		if part.Size() > before {
			stalls = 0
		} else {
			stalls++
		}
		if stalls >= maxStalls {
			return fmt.Errorf("giving up after %d attempts: %w", stalls, err)
		}
		wait := backoff(stalls)
		logrus.WithFields(logrus.Fields{"blob": desc.Digest, "have": part.Size(), "error": err}).Infof("fetch interrupted; resuming in %v", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

func backoff(stalls int) time.Duration {
	return min(200*time.Millisecond<<stalls, 3*time.Second)
}

// fetchRest makes one request for the bytes part lacks: the blob GET, and
// a ranged one in its place when part already holds some.
func fetchRest(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, part *store.Partial, m Meter) error {
	rc, err := repo.Blobs().Fetch(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	if have := part.Size(); have > 0 {
		seeker, ok := rc.(io.Seeker)
		if !ok {
			return errNoRange
		}
		if _, err := seeker.Seek(have, io.SeekStart); err != nil {
			// oras wraps the error of a request that failed, and makes
			// one of its own for an answer other than 206.
			if errors.Unwrap(err) != nil {
				return err
			}
			return fmt.Errorf("%w: %v", errNoRange, err)
		}
	}
	r := &meteredReader{r: io.LimitReader(rc, desc.Size-part.Size()), m: m}
	if _, err := io.Copy(partWriter{part}, r); err != nil {
		return err
	}
	if part.Size() < desc.Size {
		return io.ErrUnexpectedEOF
	}
	return nil
}

// partWriter writes what was fetched into the partial file, marking its
// failures as the store's (a full disk), not the registry's.
type partWriter struct{ p *store.Partial }

func (w partWriter) Write(b []byte) (int, error) {
	n, err := w.p.Write(b)
	if err != nil {
		err = storeError{err}
	}
	return n, err
}

// storeError is a failure to write into the store what the registry
// sent: asking the registry again cannot help.
type storeError struct{ err error }

func (e storeError) Error() string { return e.err.Error() }
func (e storeError) Unwrap() error { return e.err }

type meteredReader struct {
	r io.Reader
	m Meter
}

func (w *meteredReader) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if n > 0 {
		w.m.Add(n)
	}
	return n, err
}

// transient reports whether err may go away when asked again: anything
// but a refusal by the registry (not found, unauthorized, bad request),
// bytes that do not match their digest, or the store failing to take
// them (a full disk).
func transient(err error) bool {
	if errors.Is(err, store.ErrMismatch) || errors.Is(err, errdef.ErrNotFound) || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.As(err, new(storeError)) {
		return false
	}
	var resp *errcode.ErrorResponse
	if errors.As(err, &resp) {
		return resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout
	}
	return true
}
