package output

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

type item struct {
	Name string
	List []struct{ Inner string }
	// Hidden is left out of the JSON, so a template cannot name it.
	Hidden string `json:"-"`
}

func (item) Short() string { return "short" }

// TestTemplateFieldsCheckedWithNoItems: a template naming a field the
// items lack is a FormatError with nothing to print as with something,
// while fields inside range and with, of other values, are left to the
// template's run.
func TestTemplateFieldsCheckedWithNoItems(t *testing.T) {
	for format, ok := range map[string]bool{
		"{{.Name}}":             true,
		"{{.Short}} {{json .}}": true,
		"{{range .List}}{{.Inner}} {{.Other}}{{end}}": true,
		"{{with .List}}{{len .}}{{end}}":              true,
		"{{.Nope}}":                                   false,
		"{{$.Nope}}":                                  false,
		"{{if .Name}}{{.Nope}}{{end}}":                false,
		"{{range .List}}{{$.Nope}}{{end}}":            false,
		"{{range .List}}{{else}}{{.Nope}}{{end}}":     false,
		"{{join .Nope \",\"}}":                        false,
		"{{.Hidden}}":                                 false,
		"{{$.Hidden}}":                                false,
	} {
		for _, items := range [][]item{nil, {{Name: "a"}}} {
			var out bytes.Buffer
			err := Write(&out, Options{Format: format}, List[item]{}, items)
			var fe *FormatError
			if ok && err != nil || !ok && (!errors.As(err, &fe) || out.Len() != 0) {
				t.Errorf("%s over %d items: %v, output %q; want ok %v", format, len(items), err, out.String(), ok)
			}
		}
	}
}

// TestTemplateFieldsAreTheJSONFields: the fields a FormatError lists are
// the JSON's, as the README promises, not a field the JSON leaves out.
func TestTemplateFieldsAreTheJSONFields(t *testing.T) {
	err := Write(&bytes.Buffer{}, Options{Format: "{{.Nope}}"}, List[item]{}, nil)
	if want := "an item's fields are .Name .List"; err == nil || !strings.HasSuffix(err.Error(), want) {
		t.Errorf("error %v; want it to end %q", err, want)
	}
}

// TestPrintable: control characters, other unprintable runes and bytes
// that are not UTF-8 come out escaped as Go escapes them; printable text,
// spaces and backslashes stay as they are.
func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"plain name: ok":             "plain name: ok",
		"caf\u00e9 \u65e5\u672c":     "caf\u00e9 \u65e5\u672c",
		`back\slash`:                 `back\slash`,
		"a\x1b]0;title\a\x1b[2Jb":    `a\x1b]0;title\a\x1b[2Jb`,
		"tab\there\r\x00\x7f":        `tab\there\r\x00\x7f`,
		"bad \xff\xfe utf8":          `bad \xff\xfe utf8`,
		"csi \u009b31m, rtl \u202e.": `csi \u009b31m, rtl \u202e.`,
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
}
