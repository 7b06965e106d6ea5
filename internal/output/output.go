// Package output writes the lists of layerfs commands in the forms
// docker and podman users expect: an aligned table for people, and for
// scripts ids only (-q), JSON, or a Go template per item.
package output

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"text/tabwriter"
	"text/template"
	"text/template/parse"
	"unicode"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"
)

// Options are the flags every list command takes.
type Options struct {
	// Format is "table" (or empty), "json", or a Go template applied to
	// each item, as docker's --format.
	Format string
	// Quiet prints only each item's id.
	Quiet bool
	// NoTrunc prints digests whole in the table and with -q.
	NoTrunc bool
}

// Column is one column of the table: its header, one word, and the text
// of the cell for an item. An empty cell prints as "-".
type Column[T any] struct {
	Header string
	Cell   func(T) string
}

// List is how one command's items print.
type List[T any] struct {
	Columns []Column[T]
	// ID is the item's id, printed alone by -q.
	ID func(T) string
}

// Write prints items to w as opts ask. JSON and templates see the items
// themselves, so they carry raw numbers and whole digests.
func Write[T any](w io.Writer, opts Options, l List[T], items []T) error {
	switch {
	case opts.Quiet:
		for _, it := range items {
			if _, err := fmt.Fprintln(w, l.ID(it)); err != nil {
				return err
			}
		}
		return nil
	case opts.Format == "json":
		if items == nil {
			items = []T{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(items)
	case opts.Format == "" || opts.Format == "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		headers := make([]string, len(l.Columns))
		for i, c := range l.Columns {
			headers[i] = c.Header
		}
		fmt.Fprintln(tw, strings.Join(headers, "\t"))
		for _, it := range items {
			cells := make([]string, len(l.Columns))
			for i, c := range l.Columns {
				cells[i] = c.Cell(it)
				if cells[i] == "" {
					cells[i] = "-"
				}
			}
			fmt.Fprintln(tw, strings.Join(cells, "\t"))
		}
		return tw.Flush()
	}
	tmpl, err := parseTemplate(opts.Format)
	if err == nil {
		err = checkFields(reflect.TypeFor[T](), tmpl.Tree.Root)
	}
	if err != nil {
		return &FormatError{err, fieldNames[T]()}
	}
	// Written once every item has printed, so a template that fails
	// on one leaves no half of the list on stdout.
	var b bytes.Buffer
	for _, it := range items {
		if err := tmpl.Execute(&b, it); err != nil {
			return &FormatError{err, fieldNames[T]()}
		}
		b.WriteByte('\n')
	}
	_, err = w.Write(b.Bytes())
	return err
}

// FormatError is a --format template that does not parse or does not
// fit the items: a bad flag value.
type FormatError struct {
	err error
	// fields are what a template can name.
	fields []string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("--format: %v; an item's fields are %s", e.err, strings.Join(e.fields, " "))
}

func (e *FormatError) Unwrap() error { return e.err }

// fieldNames are the fields of T (a struct) a template may name, as it
// names them: ".Digest".
func fieldNames[T any]() []string {
	t := reflect.TypeFor[T]()
	var names []string
	for i := range t.NumField() {
		if f := t.Field(i); isTemplateField(f) {
			names = append(names, "."+f.Name)
		}
	}
	return names
}

// isTemplateField says whether a template may name f: the exported fields
// the JSON has, so that the two forms show the same fields and what the
// JSON leaves out stays no one's interface.
func isTemplateField(f reflect.StructField) bool {
	return f.IsExported() && f.Tag.Get("json") != "-"
}

// checkFields checks that every field n names of an item, where dot is
// the item (outside range and with, and through $), is one of t's, so
// that a script's template with a mistyped field fails where there is
// nothing to print too, not only once there is. Fields of fields are
// left to the template's own run.
func checkFields(t reflect.Type, n parse.Node) error {
	has := func(name string) bool {
		f, field := t.FieldByName(name)
		_, method := reflect.PointerTo(t).MethodByName(name)
		return field && isTemplateField(f) || method
	}
	var check func(n parse.Node, dotIsItem bool) error
	checkPipe := func(p *parse.PipeNode, dotIsItem bool) error {
		if p == nil {
			return nil
		}
		for _, c := range p.Cmds {
			for _, arg := range c.Args {
				if err := check(arg, dotIsItem); err != nil {
					return err
				}
			}
		}
		return nil
	}
	check = func(n parse.Node, dotIsItem bool) error {
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return nil
			}
			for _, c := range n.Nodes {
				if err := check(c, dotIsItem); err != nil {
					return err
				}
			}
		case *parse.ActionNode:
			return checkPipe(n.Pipe, dotIsItem)
		case *parse.PipeNode:
			return checkPipe(n, dotIsItem)
		case *parse.IfNode:
			return errors.Join(checkPipe(n.Pipe, dotIsItem), check(n.List, dotIsItem), check(n.ElseList, dotIsItem))
		case *parse.RangeNode:
			return errors.Join(checkPipe(n.Pipe, dotIsItem), check(n.List, false), check(n.ElseList, dotIsItem))
		case *parse.WithNode:
			return errors.Join(checkPipe(n.Pipe, dotIsItem), check(n.List, false), check(n.ElseList, dotIsItem))
		case *parse.FieldNode:
			if dotIsItem && !has(n.Ident[0]) {
				return fmt.Errorf("no field .%s", n.Ident[0])
			}
		case *parse.VariableNode:
			if n.Ident[0] == "$" && len(n.Ident) > 1 && !has(n.Ident[1]) {
				return fmt.Errorf("no field $.%s", n.Ident[1])
			}
		}
		return nil
	}
	return check(n, true)
}

// parseTemplate reads a --format template; {{json .}} prints a value as
// JSON and {{join .List ","}} a list of strings, as in docker's templates.
func parseTemplate(format string) (*template.Template, error) {
	return template.New("format").Funcs(template.FuncMap{
		"json": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
		"join": strings.Join,
	}).Parse(format)
}

// ShortLen is the number of hex digits a truncated digest keeps, as
// docker's image ids.
const ShortLen = 12

// Digest prints d as its first 12 hex digits, or whole with noTrunc.
func Digest(d digest.Digest, noTrunc bool) string {
	if noTrunc || d == "" {
		return d.String()
	}
	hex := d.Encoded()
	return hex[:min(ShortLen, len(hex))]
}

// Size prints a byte count in decimal units with three significant
// digits, as docker does, and without a space so that every table field
// is one word: 165MB, 4.1kB, 512B.
func Size(n int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB", "PB"}
	f := float64(n)
	i := 0
	for f >= 999.5 && i < len(units)-1 {
		f /= 1000
		i++
	}
	return strconv.FormatFloat(f, 'g', 3, 64) + units[i]
}

// Name prints a name or path for line-oriented output: as it is when it
// is plain, else Go-quoted, so that a newline, tab, backslash or other
// control character in it cannot write a line, or a field, of its own.
// A name starting with a double quote is quoted too, so that a quoted
// name is never mistaken for a plain one.
func Name(s string) string {
	if needsQuote(s) {
		return strconv.Quote(s)
	}
	return s
}

// Printable escapes, as Go quoting does, each control or other
// unprintable character of a message and each byte that is not UTF-8,
// leaving the rest as it is: a message naming what an image holds (an
// error, a log line) cannot then move the cursor, retitle the terminal
// or write a line of its own.
func Printable(s string) string {
	if !hasUnprintable(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsPrint(r) || r == ' ':
			b.WriteString(s[i : i+size])
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
}

func hasUnprintable(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) && r != ' ' {
			return true
		}
	}
	return false
}

func needsQuote(s string) bool {
	if strings.HasPrefix(s, `"`) {
		return true
	}
	for _, r := range s {
		if r == '\\' || r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return true
		}
	}
	return false
}
