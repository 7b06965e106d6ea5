package layer

import (
	"io"
	"sync/atomic"
)

// BehindWriter hands what is written to it to its destination on a
// goroutine of its own, a few buffers behind the writer. An extraction
// is as slow as the goroutine that decompresses its largest layer, which
// also hashed the compressed and the decompressed stream and wrote the
// blob; those now run beside it, on the core the tar parsing leaves
// free.
type BehindWriter struct {
	dst  io.Writer
	full chan []byte
	free chan []byte
	// made is how many buffers exist: they are made as needed, so a
	// small layer costs one.
	made int
	cur  []byte
	done chan struct{}
	// failed holds dst's first error, once there is one.
	failed atomic.Pointer[error]
	closed bool
}

// Behind starts a BehindWriter to dst. Close must be called, also when
// the writing is given up.
func Behind(dst io.Writer) *BehindWriter {
	w := &BehindWriter{
		dst:  dst,
		full: make(chan []byte, behindBuffers),
		free: make(chan []byte, behindBuffers),
		done: make(chan struct{}),
	}
	go w.drain()
	return w
}

func (w *BehindWriter) drain() {
	defer close(w.done)
	for b := range w.full {
		if w.failed.Load() == nil {
			if _, err := w.dst.Write(b); err != nil {
				w.failed.Store(&err)
			}
		}
		w.free <- b[:0]
	}
}

// Write copies p and returns, or returns dst's error once it has one.
func (w *BehindWriter) Write(p []byte) (int, error) {
	if err := w.failed.Load(); err != nil {
		return 0, *err
	}
	n := len(p)
	for len(p) > 0 {
		if w.cur == nil {
			w.cur = w.buffer()
		}
		m := copy(w.cur[len(w.cur):cap(w.cur)], p)
		w.cur, p = w.cur[:len(w.cur)+m], p[m:]
		if len(w.cur) == cap(w.cur) {
			w.full <- w.cur
			w.cur = nil
		}
	}
	return n, nil
}

func (w *BehindWriter) buffer() []byte {
	select {
	case b := <-w.free:
		return b
	default:
	}
	if w.made < behindBuffers {
		w.made++
		return make([]byte, 0, chunkSize)
	}
	return <-w.free
}

// Close hands dst the rest, waits until it has taken everything, and
// returns its first error. Once closed, it stays closed.
func (w *BehindWriter) Close() error {
	if !w.closed {
		w.closed = true
		if w.cur != nil {
			w.full <- w.cur
			w.cur = nil
		}
		close(w.full)
		<-w.done
	}
	if err := w.failed.Load(); err != nil {
		return *err
	}
	return nil
}
