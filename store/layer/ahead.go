package layer

import "io"

// aheadReader reads its source in a goroutine of its own, up to a few
// buffers ahead of the consumer, so that decompression and the diff_id
// hash run on one core while the tar is parsed and files are hashed and
// written on another.
type aheadReader struct {
	full chan aheadChunk
	free chan []byte
	stop chan struct{}
	done chan struct{}
	cur  []byte
	held []byte
	err  error
}

type aheadChunk struct {
	b   []byte
	err error
}

// aheadBuffers and behindBuffers are how many chunks of a stream, of
// chunkSize bytes each, a reader ahead or a writer behind holds.
const (
	aheadBuffers  = 4
	behindBuffers = 8
	chunkSize     = 256 << 10
)

func readAhead(src io.Reader) *aheadReader {
	a := &aheadReader{
		full: make(chan aheadChunk, aheadBuffers),
		free: make(chan []byte, aheadBuffers),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	for range aheadBuffers {
		a.free <- make([]byte, chunkSize)
	}
	go a.fill(src)
	return a
}

func (a *aheadReader) fill(src io.Reader) {
	defer close(a.done)
	for {
		var b []byte
		select {
		case b = <-a.free:
		case <-a.stop:
			return
		}
		n := 0
		var err error
		for n < len(b) && err == nil {
			var m int
			m, err = src.Read(b[n:])
			n += m
		}
		select {
		case a.full <- aheadChunk{b[:n], err}:
		case <-a.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

func (a *aheadReader) Read(p []byte) (int, error) {
	for len(a.cur) == 0 {
		if a.err != nil {
			return 0, a.err
		}
		if a.held != nil {
			a.free <- a.held[:cap(a.held)]
			a.held = nil
		}
		c := <-a.full
		a.held, a.cur, a.err = c.b, c.b, c.err
	}
	n := copy(p, a.cur)
	a.cur = a.cur[n:]
	return n, nil
}

// close stops the goroutine and waits for it, so that the source may be
// closed after.
func (a *aheadReader) close() {
	close(a.stop)
	<-a.done
}
