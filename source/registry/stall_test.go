package registry

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestStalledManifestEnds has a registry send the headers of a manifest
// and its first byte, then nothing: the pull must give up once nothing
// has come for the idle timeout, saying so, not wait forever.
func TestStalledManifestEnds(t *testing.T) {
	defer func(was time.Duration) { idleTimeout = was }(idleTimeout)
	idleTimeout = 200 * time.Millisecond
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Content-Length", "1000")
		w.Write([]byte("{"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c, err := newClient(false, 1)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := c.repository(context.Background(), strings.TrimPrefix(srv.URL, "http://"), "stalled")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := fetchManifest(context.Background(), repo, "latest")
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errStalled) {
			t.Errorf("fetch of a stalled manifest: %v; want it to say the registry stopped sending", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("fetch of a stalled manifest still waiting after 10s")
	}
}
