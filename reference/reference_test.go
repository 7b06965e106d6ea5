package reference

import "testing"

func TestParseReference(t *testing.T) {
	cases := map[string]string{
		"debian":                          "docker.io/library/debian:latest",
		"layerfs-test/v3":                 "docker.io/layerfs-test/v3:latest",
		"localhost:5000/a/b:v1":           "localhost:5000/a/b:v1",
		"127.0.0.1:5000/x":                "127.0.0.1:5000/x:latest",
		"reg.example:443/x@sha256:" + h64: "reg.example:443/x@sha256:" + h64,
		"[::1]:5000/x:1":                  "[::1]:5000/x:1",
	}
	for in, want := range cases {
		r, err := Parse(in)
		if err != nil || r.String() != want {
			t.Errorf("Parse(%q) = %q, %v; want %q", in, r.String(), err, want)
		}
	}
	for _, bad := range []string{"", "UPPER/case", "a:b:c", "x@sha256:12", "a//b", "dir:/tmp/x", "host:port/x", "-a.b/x"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestMatches(t *testing.T) {
	for _, c := range []struct {
		name, filter string
		want         bool
	}{
		{"docker.io/library/debian:12", "debian", true},
		{"docker.io/library/debian:12", "debian:12", true},
		{"docker.io/library/debian:12", "debian:11", false},
		{"docker.io/library/debian:12", "docker.io/library/debian", true},
		{"docker.io/library/debian-slim:12", "debian", false},
		{"localhost:5000/team/app:v1", "localhost:5000/team/app", true},
		{"localhost:5000/team/app@sha256:" + h64, "localhost:5000/team/app", true},
		{"localhost:5000/team/app:v1", "team/app", false},
		{"v1", "v1", true},
		{"v1", "v2", false},
		{"my layout name", "my layout name", true},
		// A short stored name, as an OCI layout's ref name may be.
		{"debian", "docker.io/library/debian:latest", true},
		{"debian", "debian:latest", true},
		{"debian", "library/debian", true},
		{"debian", "debian:12", false},
		{"debian:12", "docker.io/library/debian:12", true},
	} {
		if got := Matches(c.name, c.filter); got != c.want {
			t.Errorf("Matches(%q, %q) = %v, want %v", c.name, c.filter, got, c.want)
		}
	}
}

const h64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
