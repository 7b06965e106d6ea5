package layer

import (
	"bufio"
	"bytes"
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// runBytes is how many bytes of records a sorter holds in memory before it
// sorts them and writes them out as one run: the bound on an import's
// memory whatever the number of entries in its layer.
var runBytes = 8 << 20

// sorter sorts (key, body) records by key in bounded memory, as external
// sorts do: records gather in memory up to runBytes, are sorted and
// written to a run file in dir, and the runs are merged when read. A
// sorter that never filled its memory never touches the disk.
type sorter struct {
	dir   string
	name  string
	data  []byte // records, each a uvarint key length, the key, then the body length and body
	offs  []int  // start of each record in data
	runs  []string
	count int
}

func newSorter(dir, name string) *sorter { return &sorter{dir: dir, name: name} }

func (s *sorter) add(key, body []byte) error {
	size := 2*binary.MaxVarintLen32 + len(key) + len(body)
	if len(s.data) > 0 && len(s.data)+size > runBytes {
		if err := s.spill(); err != nil {
			return err
		}
	}
	s.offs = append(s.offs, len(s.data))
	s.data = binary.AppendUvarint(s.data, uint64(len(key)))
	s.data = append(s.data, key...)
	s.data = binary.AppendUvarint(s.data, uint64(len(body)))
	s.data = append(s.data, body...)
	s.count++
	return nil
}

// record splits the record starting at data[off:].
func record(b []byte) (key, body []byte, n int) {
	kl, k := binary.Uvarint(b)
	key = b[k : k+int(kl)]
	rest := b[k+int(kl):]
	bl, m := binary.Uvarint(rest)
	body = rest[m : m+int(bl)]
	return key, body, k + int(kl) + m + int(bl)
}

func (s *sorter) sortMemory() {
	slices.SortFunc(s.offs, func(a, b int) int {
		ka, _, _ := record(s.data[a:])
		kb, _, _ := record(s.data[b:])
		return bytes.Compare(ka, kb)
	})
}

func (s *sorter) spill() error {
	s.sortMemory()
	f, err := os.Create(filepath.Join(s.dir, fmt.Sprintf("%s-run-%d", s.name, len(s.runs))))
	if err != nil {
		return fmt.Errorf("spill sorted run: %w", err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<18)
	for _, off := range s.offs {
		_, _, n := record(s.data[off:])
		if _, err := w.Write(s.data[off : off+n]); err != nil {
			return fmt.Errorf("spill sorted run: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("spill sorted run: %w", err)
	}
	s.runs = append(s.runs, f.Name())
	s.data, s.offs = s.data[:0], s.offs[:0]
	return nil
}

// cursor reads records in key order; key and body stay valid until the
// next call.
type cursor interface {
	next() (key, body []byte, ok bool, err error)
	close()
}

// read returns the records in key order: from memory when nothing was
// spilled, else merged from the runs. It is called once; see replayable
// for a sequence read more than once.
func (s *sorter) read() (cursor, error) {
	if len(s.runs) == 0 {
		s.sortMemory()
		return &memCursor{s: s}, nil
	}
	if len(s.data) > 0 {
		if err := s.spill(); err != nil {
			return nil, err
		}
	}
	s.data, s.offs = nil, nil
	m := &mergeCursor{}
	for _, name := range s.runs {
		f, err := os.Open(name)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("read sorted run: %w", err)
		}
		r := &runReader{f: f, r: bufio.NewReaderSize(f, 32<<10)}
		ok, err := r.advance()
		if err != nil {
			f.Close()
			m.close()
			return nil, err
		}
		if ok {
			m.h = append(m.h, r)
		} else {
			f.Close()
		}
	}
	heap.Init(&m.h)
	return m, nil
}

// replayable sorts the records once and returns a function that opens a
// new cursor over them from the start, as often as needed.
func (s *sorter) replayable() (func() (cursor, error), error) {
	if len(s.runs) == 0 {
		s.sortMemory()
		return func() (cursor, error) { return &memCursor{s: s}, nil }, nil
	}
	c, err := s.read()
	if err != nil {
		return nil, err
	}
	defer c.close()
	name := filepath.Join(s.dir, s.name+"-merged")
	f, err := os.Create(name)
	if err != nil {
		return nil, fmt.Errorf("merge sorted runs: %w", err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<18)
	var buf []byte
	for {
		key, body, ok, err := c.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		buf = binary.AppendUvarint(buf[:0], uint64(len(key)))
		buf = append(buf, key...)
		buf = binary.AppendUvarint(buf, uint64(len(body)))
		buf = append(buf, body...)
		if _, err := w.Write(buf); err != nil {
			return nil, fmt.Errorf("merge sorted runs: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		return nil, fmt.Errorf("merge sorted runs: %w", err)
	}
	for _, r := range s.runs {
		os.Remove(r)
	}
	s.runs = []string{name}
	return func() (cursor, error) { return s.read() }, nil
}

type memCursor struct {
	s *sorter
	i int
}

func (c *memCursor) next() ([]byte, []byte, bool, error) {
	if c.i >= len(c.s.offs) {
		return nil, nil, false, nil
	}
	key, body, _ := record(c.s.data[c.s.offs[c.i]:])
	c.i++
	return key, body, true, nil
}

func (c *memCursor) close() {}

type runReader struct {
	f    *os.File
	r    *bufio.Reader
	key  []byte
	body []byte
}

func (r *runReader) advance() (bool, error) {
	kl, err := binary.ReadUvarint(r.r)
	if errors.Is(err, io.EOF) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read sorted run: %w", err)
	}
	r.key = slices.Grow(r.key[:0], int(kl))[:kl]
	if _, err := io.ReadFull(r.r, r.key); err != nil {
		return false, fmt.Errorf("read sorted run: %w", err)
	}
	bl, err := binary.ReadUvarint(r.r)
	if err != nil {
		return false, fmt.Errorf("read sorted run: %w", err)
	}
	r.body = slices.Grow(r.body[:0], int(bl))[:bl]
	if _, err := io.ReadFull(r.r, r.body); err != nil {
		return false, fmt.Errorf("read sorted run: %w", err)
	}
	return true, nil
}

type runHeap []*runReader

func (h runHeap) Len() int           { return len(h) }
func (h runHeap) Less(i, j int) bool { return bytes.Compare(h[i].key, h[j].key) < 0 }
func (h runHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *runHeap) Push(x any)        { *h = append(*h, x.(*runReader)) }
func (h *runHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// mergeCursor merges runs; the record it last returned is held in last,
// whose reader advances on the next call.
type mergeCursor struct {
	h    runHeap
	last *runReader
}

func (m *mergeCursor) next() ([]byte, []byte, bool, error) {
	if m.last != nil {
		ok, err := m.last.advance()
		if err != nil {
			return nil, nil, false, err
		}
		if ok {
			heap.Push(&m.h, m.last)
		} else {
			m.last.f.Close()
		}
		m.last = nil
	}
	if len(m.h) == 0 {
		return nil, nil, false, nil
	}
	m.last = heap.Pop(&m.h).(*runReader)
	return m.last.key, m.last.body, true, nil
}

func (m *mergeCursor) close() {
	for _, r := range m.h {
		r.f.Close()
	}
	if m.last != nil {
		m.last.f.Close()
	}
	m.h, m.last = nil, nil
}
