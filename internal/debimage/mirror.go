package debimage

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// suite is the Debian release the image is built from.
const suite = "bookworm"

// findMirror returns the archive URI that this machine's apt uses for
// suite, so that the build goes wherever apt is allowed to go: first from
// the deb822 files in sourcesDir (*.sources), then from the one-line
// sourcesList.
func findMirror(sourcesDir, sourcesList string) (string, error) {
	files, err := filepath.Glob(filepath.Join(sourcesDir, "*.sources"))
	if err != nil {
		return "", fmt.Errorf("find apt sources in %s: %w", sourcesDir, err)
	}
	sort.Strings(files)
	for _, f := range files {
		uri, err := mirrorFromDeb822(f)
		if err != nil {
			return "", err
		}
		if uri != "" {
			return uri, nil
		}
	}
	uri, err := mirrorFromList(sourcesList)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if uri == "" {
		return "", fmt.Errorf("no apt source for %s in %s/*.sources or %s", suite, sourcesDir, sourcesList)
	}
	return uri, nil
}

// mirrorFromDeb822 returns the first URI of the first enabled "deb" stanza
// of file whose Suites include suite, or "" if there is none.
func mirrorFromDeb822(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("read apt sources %s: %w", file, err)
	}
	defer f.Close()

	fields := map[string]string{}
	var last string
	match := func() string {
		defer clear(fields)
		if strings.EqualFold(fields["enabled"], "no") ||
			!slices.Contains(strings.Fields(fields["types"]), "deb") ||
			!slices.Contains(strings.Fields(fields["suites"]), suite) {
			return ""
		}
		if uris := strings.Fields(fields["uris"]); len(uris) > 0 {
			return uris[0]
		}
		return ""
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(strings.TrimSpace(line), "#"):
		case strings.TrimSpace(line) == "":
			if uri := match(); uri != "" {
				return uri, nil
			}
		case line[0] == ' ' || line[0] == '\t':
			if last != "" {
				fields[last] += " " + strings.TrimSpace(line)
			}
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				return "", fmt.Errorf("apt sources %s: malformed line %q", file, line)
			}
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read apt sources %s: %w", file, err)
	}
	return match(), nil
}

// mirrorFromList returns the URI of the first "deb" line of a one-line
// style sources.list for suite, or "" if there is none.
func mirrorFromList(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("read apt sources %s: %w", file, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		words := strings.Fields(line)
		if len(words) < 3 || words[0] != "deb" {
			continue
		}
		words = words[1:]
		// Options: "[arch=amd64 signed-by=...]", possibly split by spaces.
		if strings.HasPrefix(words[0], "[") {
			for len(words) > 0 && !strings.HasSuffix(words[0], "]") {
				words = words[1:]
			}
			if len(words) > 0 {
				words = words[1:]
			}
		}
		if len(words) >= 2 && words[1] == suite {
			return words[0], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read apt sources %s: %w", file, err)
	}
	return "", nil
}
