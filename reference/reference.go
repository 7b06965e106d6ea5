// Package reference reads image references and names as docker does:
// "debian" is docker.io/library/debian:latest. Pull reads its arguments
// with it, import the tags of archives, and the store the names it lists.
package reference

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"
)

const (
	defaultDomain = "docker.io"
	officialRepo  = "library/"
	defaultTag    = "latest"
)

var (
	repoComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	// domainPattern is docker's registry host: dot-separated labels or a
	// bracketed IPv6 address, and an optional numeric port.
	domainPattern = regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$`)
	tagPattern    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	// refName is the grammar the OCI image spec gives the
	// org.opencontainers.image.ref.name annotation, which umoci and
	// skopeo hold a layout's names to.
	refName = regexp.MustCompile(`^[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*$`)
)

// Reference is an image reference split the way docker reads one.
type Reference struct {
	Domain string // registry host, with port
	Path   string // repository path within the registry
	Tag    string
	Digest string // "sha256:...", when pinned
}

// String is the reference's full form: domain/path:tag[@digest] or
// domain/path@digest.
func (r Reference) String() string {
	s := r.Domain + "/" + r.Path
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}

// Parse reads an image reference as docker does: "debian" is
// docker.io/library/debian:latest, "host:5000/repo" is host:5000/repo:latest.
func Parse(s string) (Reference, error) {
	var r Reference
	rest := s
	if i := strings.Index(rest, "@"); i >= 0 {
		r.Digest = rest[i+1:]
		rest = rest[:i]
		if !strings.HasPrefix(r.Digest, "sha256:") || len(r.Digest) != len("sha256:")+64 || !isHex(r.Digest[len("sha256:"):]) {
			return r, fmt.Errorf("reference %q: bad digest %q", s, r.Digest)
		}
	}
	if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i:], "/") {
		r.Tag = rest[i+1:]
		rest = rest[:i]
		if !tagPattern.MatchString(r.Tag) {
			return r, fmt.Errorf("reference %q: bad tag %q", s, r.Tag)
		}
	}
	first, remainder, hasSlash := strings.Cut(rest, "/")
	if hasSlash && (strings.ContainsAny(first, ".:") || first == "localhost") {
		r.Domain, r.Path = first, remainder
	} else {
		r.Domain, r.Path = defaultDomain, rest
	}
	if r.Domain == defaultDomain && !strings.Contains(r.Path, "/") {
		r.Path = officialRepo + r.Path
	}
	if r.Path == "" {
		return r, fmt.Errorf("reference %q: no repository", s)
	}
	if !domainPattern.MatchString(r.Domain) {
		// skopeo's dir:/path is no registry "dir:".
		return r, fmt.Errorf("reference %q: bad registry host %q", s, r.Domain)
	}
	for _, c := range strings.Split(r.Path, "/") {
		if !repoComponent.MatchString(c) {
			return r, fmt.Errorf("reference %q: bad repository component %q", s, c)
		}
	}
	if r.Tag == "" && r.Digest == "" {
		r.Tag = defaultTag
	}
	return r, nil
}

// Normalize returns the full form of a docker-style name, or the name
// itself when it is not one (an OCI layout's ref name may be anything).
func Normalize(s string) string {
	r, err := Parse(s)
	if err != nil {
		return s
	}
	return r.String()
}

// SameName reports whether a and b are one name as docker reads names:
// the same as given or in full docker form ("debian" and
// "docker.io/library/debian:latest").
func SameName(a, b string) bool {
	return a == b || Normalize(a) == Normalize(b)
}

// Matches reports whether the stored name is one that filter names, as
// docker images REPOSITORY[:TAG] reads its argument: the same name
// (SameName), or, when filter gives no tag nor digest, any tag of that
// repository ("debian" matches docker.io/library/debian:12).
func Matches(name, filter string) bool {
	if SameName(name, filter) {
		return true
	}
	last := filter[strings.LastIndex(filter, "/")+1:]
	if strings.ContainsAny(last, ":@") {
		return false
	}
	f, err := Parse(filter)
	if err != nil {
		return false
	}
	n, err := Parse(name)
	return err == nil && n.Domain == f.Domain && n.Path == f.Path
}

// MinDigestPrefix is the shortest digest prefix a target may use.
const MinDigestPrefix = 12

// IsDigestPrefix reports whether hex may be a digest's prefix on the
// command line: MinDigestPrefix to 64 lowercase hex digits.
func IsDigestPrefix(hex string) bool {
	return len(hex) >= MinDigestPrefix && len(hex) <= 64 && isHex(hex)
}

func isHex(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}

// CheckRefName refuses a name that is not an OCI ref name: a name with
// a space would make two fields of one in every table, and one other
// tools cannot write to a layout's index would not survive a copy.
func CheckRefName(name string) error {
	if !refName.MatchString(name) {
		return fmt.Errorf("image name %q is not an OCI ref name: letters and digits, joined by one of - . _ : @ + or --, in components separated by /", name)
	}
	return nil
}

// CheckName refuses a name that a target would read as a digest: one
// starting with a digest algorithm, or of 12 to 64 hex digits, as given or
// in the short form a user would type (docker.io/library/X:latest as X).
// Digests resolve first, so such a name could only be reached by accident.
func CheckName(name string) error {
	forms := []string{name}
	if r, err := Parse(name); err == nil && r.Domain == defaultDomain && r.Digest == "" {
		short := strings.TrimPrefix(r.Path, officialRepo)
		forms = append(forms, short)
	}
	for _, f := range forms {
		alg, _, hasAlg := strings.Cut(f, ":")
		isAlg := alg == string(digest.SHA256) || alg == string(digest.SHA384) || alg == string(digest.SHA512)
		if (hasAlg && isAlg) || IsDigestPrefix(f) {
			return fmt.Errorf("image name %q reads as a digest: refused, since it would stand for another image's digest", name)
		}
	}
	return nil
}
