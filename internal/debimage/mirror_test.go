package debimage

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFindMirror(t *testing.T) {
	cases := []struct {
		name    string
		sources map[string]string
		list    string
		want    string
	}{
		{
			name: "deb822",
			sources: map[string]string{
				"a-other.sources": "Types: deb\nURIs: http://other.invalid/x\nSuites: nodistro\nComponents: main\n",
				"debian.sources": "Types: deb\n# comment\nURIs: http://one.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n" +
					"Types: deb\nURIs: http://one.invalid/debian-security\nSuites: bookworm-security\n",
				"ignored.sources.disabled": "Types: deb\nURIs: http://no.invalid/\nSuites: bookworm\n",
			},
			want: "http://one.invalid/debian",
		},
		{
			name: "deb822 skips disabled and deb-src",
			sources: map[string]string{
				"debian.sources": "Types: deb-src\nURIs: http://src.invalid/\nSuites: bookworm\n\n" +
					"Enabled: no\nTypes: deb\nURIs: http://off.invalid/\nSuites: bookworm\n\n" +
					"Types: deb deb-src\nURIs:\n http://cont.invalid/debian\n http://second.invalid/\nSuites: bookworm\n",
			},
			want: "http://cont.invalid/debian",
		},
		{
			name: "sources.list",
			list: "# deb http://commented.invalid/ bookworm main\n" +
				"deb https://x.invalid/apt cloud-sdk-bookworm main\n" +
				"deb-src http://src.invalid/ bookworm main\n" +
				"deb [arch=amd64 signed-by=/k.gpg] http://list.invalid/debian bookworm main\n",
			want: "http://list.invalid/debian",
		},
		{
			name: "none",
			list: "deb http://x.invalid/ bullseye main\n",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			d := filepath.Join(dir, "sources.list.d")
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
			for name, body := range c.sources {
				if err := os.WriteFile(filepath.Join(d, name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			list := filepath.Join(dir, "sources.list")
			if c.list != "" {
				if err := os.WriteFile(list, []byte(c.list), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := findMirror(d, list)
			if c.want == "" {
				if err == nil {
					t.Errorf("found %q, want an error", got)
				}
				return
			}
			if err != nil || got != c.want {
				t.Errorf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}
