package reference

import "testing"

func TestParseReference(t *testing.T) {
	cases := map[string]string{
		"debian":                          "docker.io/library/debian:latest",
		"layerfs-test/v3":                 "docker.io/layerfs-test/v3:latest",
		"localhost:5000/a/b:v1":           "localhost:5000/a/b:v1",
		"127.0.0.1:5000/x":                "127.0.0.1:5000/x:latest",
		"reg.example:443/x@sha256:" + h64: "reg.example:443/x@sha256:" + h64,
	}
	for in, want := range cases {
		r, err := Parse(in)
		if err != nil || r.String() != want {
			t.Errorf("Parse(%q) = %q, %v; want %q", in, r.String(), err, want)
		}
	}
	for _, bad := range []string{"", "UPPER/case", "a:b:c", "x@sha256:12", "a//b"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

const h64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
