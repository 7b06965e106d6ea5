package fs

import (
	"os"
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/view"
)

// A program that opens one file of a view after another (tar, rsync,
// mkfs.ext4 -d, cp -a) waits, on a cold cache, for each content object to
// be found by its hash and its first bytes read from disk: objects lie by
// hash, not near their neighbours in the tree, so the disk cannot stream
// them, and every wait is a FUSE OPEN the program is stuck in. readAhead
// opens the objects of the files that follow an opened one, while the
// program reads that one.
//
// "Follow" is the order of the layer's index: one directory's children
// are one run of records, sorted by name, as walkers read them. Like the
// kernel's page readahead, the window starts small after an open that
// was not foreseen and doubles with every open that was, so one file
// read now and then costs a few object opens, and a walk runs up to
// aheadMax files ahead.
type readAhead struct {
	view       view.View
	openObject view.ObjectOpener

	mu      sync.Mutex
	windows map[int]*window // by layer
	queue   []view.Ref
	workers int
	// ready are objects opened ahead and not yet taken, oldest first.
	ready  []prefetched
	closed bool
}

type window struct {
	// end is the last record queued; size how far ahead of an open it
	// reaches.
	end, size uint32
}

type prefetched struct {
	object digest.Digest
	f      *os.File
}

const (
	aheadMin = 4
	aheadMax = 64
	// aheadWorkers opens run at once: a disk serves several random
	// reads together faster than one after another.
	aheadWorkers = 4
	// aheadBytes of each object are asked for: the kernel's first
	// readahead of a file.
	aheadBytes = 128 << 10
)

func newReadAhead(v view.View, openObject view.ObjectOpener) *readAhead {
	return &readAhead{view: v, openObject: openObject, windows: map[int]*window{}}
}

// take returns object opened ahead, or nil, and moves the window of r's
// layer: r is the top record of the file being opened.
func (ra *readAhead) take(r view.Ref, object digest.Digest) *os.File {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	var f *os.File
	if i := slices.IndexFunc(ra.ready, func(p prefetched) bool { return p.object == object }); i >= 0 {
		f = ra.ready[i].f
		ra.ready = slices.Delete(ra.ready, i, i+1)
	}
	w := ra.windows[r.Layer]
	switch {
	case w == nil:
		w = &window{end: r.Rec, size: aheadMin}
		ra.windows[r.Layer] = w
	case f != nil:
		w.size = min(2*w.size, aheadMax)
	case r.Rec > w.end || r.Rec+aheadMax < w.end:
		// A new run: nothing queued is near.
		w.end, w.size = r.Rec, aheadMin
	}
	if w.end >= r.Rec+w.size/2 {
		return f
	}
	for rec := max(w.end, r.Rec) + 1; rec <= r.Rec+w.size; rec++ {
		ra.queue = append(ra.queue, view.Ref{Layer: r.Layer, Rec: rec})
	}
	w.end = r.Rec + w.size
	for ; ra.workers < aheadWorkers && ra.workers < len(ra.queue); ra.workers++ {
		go ra.work()
	}
	return f
}

// work opens queued objects until the queue is empty.
func (ra *readAhead) work() {
	for {
		ra.mu.Lock()
		if len(ra.queue) == 0 {
			ra.workers--
			ra.mu.Unlock()
			return
		}
		r := ra.queue[0]
		ra.queue = ra.queue[1:]
		ra.mu.Unlock()
		ra.fetch(r)
	}
}

// fetch opens the object of record r, if r is a file with content, and
// asks the kernel for its first bytes. Whatever fails is left to the
// OPEN that follows, which reports it.
func (ra *readAhead) fetch(r view.Ref) {
	a, err := ra.view.Attr(view.Node{r})
	if err != nil || a.Type != view.TypeReg || a.Object == "" || ra.isReady(a.Object) {
		return
	}
	f, err := ra.openObject(r, a)
	if err != nil {
		return
	}
	// Advice only: a kernel that declines it reads on demand.
	_ = unix.Fadvise(int(f.Fd()), 0, min(a.Size, aheadBytes), unix.FADV_WILLNEED)
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if ra.closed {
		f.Close()
		return
	}
	ra.ready = append(ra.ready, prefetched{object: a.Object, f: f})
	if len(ra.ready) > 2*aheadMax {
		// Opened ahead of a walk that went elsewhere.
		ra.ready[0].f.Close()
		ra.ready = ra.ready[1:]
	}
}

// isReady tells whether object is open already: files of one content
// share it.
func (ra *readAhead) isReady(object digest.Digest) bool {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	return slices.ContainsFunc(ra.ready, func(p prefetched) bool { return p.object == object })
}

// close closes every object opened ahead and not taken, and those opened
// from now on.
func (ra *readAhead) close() {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	ra.closed = true
	for _, p := range ra.ready {
		p.f.Close()
	}
	ra.ready = nil
	ra.queue = nil
}
