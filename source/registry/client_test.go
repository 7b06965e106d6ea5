package registry

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"oras.land/oras-go/v2/registry/remote/auth"
)

// TestDockerHubCredentials: Docker Hub's credentials are found under the
// key each login writes them by, docker login's index URL in docker's
// config.json and podman login's docker.io in containers' auth.json
// (containers-auth.json(5)), docker's first.
func TestDockerHubCredentials(t *testing.T) {
	write := func(t *testing.T, path, key, password string) {
		t.Helper()
		entry := base64.StdEncoding.EncodeToString([]byte("user:" + password))
		data := `{"auths": {"` + key + `": {"auth": "` + entry + `"}}}`
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name           string
		docker, podman bool
		want           string
	}{
		{"docker login", true, false, "docker"},
		{"podman login", false, true, "podman"},
		{"both", true, true, "docker"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			t.Setenv("DOCKER_CONFIG", dir)
			t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(dir, "auth.json"))
			if c.docker {
				write(t, filepath.Join(dir, "config.json"), "https://index.docker.io/v1/", "docker")
			}
			if c.podman {
				write(t, filepath.Join(dir, "auth.json"), "docker.io", "podman")
			}
			cl, err := newClient(false, 1)
			if err != nil {
				t.Fatal(err)
			}
			cred, _, err := cl.credential(context.Background(), dockerHubEndpoint)
			if err != nil {
				t.Fatal(err)
			}
			if want := (auth.Credential{Username: "user", Password: c.want}); cred != want {
				t.Errorf("credential %+v, want %+v", cred, want)
			}
		})
	}
}
