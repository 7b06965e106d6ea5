package fs

import (
	"errors"
	"os"
	"slices"
	"sync"
	"time"

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
// "Follow" is the order of the directory listings the kernel was given:
// walkers open a directory's files in the order they read them. So only
// what the view shows is opened ahead, never the files an upper layer
// hides. Like the kernel's page readahead, a window starts small at an
// open that was not foreseen and whose object's bytes are not in memory,
// and doubles with every open that was foreseen, so one file read now and
// then costs a few object opens, a walk runs up to aheadMax files ahead,
// and a walk over objects already in memory opens nothing ahead: there it
// would only take the CPU from the walk.
type readAhead struct {
	view       view.View
	openObject view.ObjectOpener

	mu sync.Mutex
	// listings are the regular files of the directories listed lately,
	// oldest first, and files how many they hold in all.
	listings []*listing
	files    int
	// current is the listing of the last file opened ahead or missed.
	current *listing
	// coldRead is when an open last found its object ready or read it
	// from disk: while a cold walk reads files.
	coldRead time.Time
	// now is the clock coldRead is read from and compared with.
	now     func() time.Time
	queue   []view.Ref
	workers int
	// ready are objects opened ahead and not yet taken, oldest first.
	ready  []prefetched
	closed bool
}

// listing is the regular files of one directory, in the order listed.
type listing struct {
	dir   uint64
	files []view.Ref
	// next is the index after the last file opened; end the index after
	// the last file queued, and size how far ahead of an open the window
	// reaches.
	next, end, size int
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
	// listedFiles and listedDirs bound what is kept of listings: a walk
	// opens a directory's files soon after listing it. rsync lists
	// furthest ahead of its opens, and on the bench's images found every
	// file it opened in the listings kept. One listing larger than
	// listedFiles is kept alone, whole: the kernel holds it too.
	listedFiles = 1 << 16
	listedDirs  = 1024
	// skipAhead files of a listing may be passed over between two opens:
	// empty files and further names of hardlinks are not opened.
	skipAhead = 8
	// coldWalk is how long after a cold read a directory listed is taken
	// as the next one a walk reads files of.
	coldWalk = time.Second
)

func newReadAhead(v view.View, openObject view.ObjectOpener) *readAhead {
	return &readAhead{view: v, openObject: openObject, now: time.Now}
}

// listed keeps the regular files of directory dir, whose listing the
// kernel was given, for the opens that follow.
func (ra *readAhead) listed(dir uint64, children []view.Child) {
	var files []view.Ref
	for _, c := range children {
		if c.Type == view.TypeReg {
			files = append(files, c.Top)
		}
	}
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if i := slices.IndexFunc(ra.listings, func(l *listing) bool { return l.dir == dir }); i >= 0 {
		ra.drop(i)
	}
	if len(files) == 0 {
		return
	}
	for len(ra.listings) > 0 && (len(ra.listings) >= listedDirs || ra.files+len(files) > listedFiles) {
		ra.drop(0)
	}
	l := &listing{dir: dir, files: files}
	ra.listings = append(ra.listings, l)
	ra.files += len(files)
	if ra.now().Sub(ra.coldRead) < coldWalk {
		// A walk that reads files lists a directory just before it
		// opens them: its first open would otherwise wait on the disk,
		// once in every directory.
		l.size = aheadMin
		ra.queueAhead(l)
	}
}

func (ra *readAhead) drop(i int) {
	if ra.listings[i] == ra.current {
		ra.current = nil
	}
	ra.files -= len(ra.listings[i].files)
	ra.listings = slices.Delete(ra.listings, i, i+1)
}

// take returns object opened ahead for the file whose top record is r, or
// nil, and moves that file's window on.
func (ra *readAhead) take(r view.Ref, object digest.Digest) *os.File {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	i := slices.IndexFunc(ra.ready, func(p prefetched) bool { return p.object == object })
	if i < 0 {
		return nil
	}
	f := ra.ready[i].f
	ra.ready = slices.Delete(ra.ready, i, i+1)
	ra.advance(r, true)
	return f
}

// missed tells that the file whose top record is r found nothing opened
// ahead and opened its object f itself. If f's first bytes are not in
// memory, a cold walk may have begun, and the files after r are opened
// ahead. The probe that tells starts the read of f's first bytes, which
// the open's caller reads next.
func (ra *readAhead) missed(r view.Ref, f *os.File) {
	var b [1]byte
	if _, err := unix.Preadv2(int(f.Fd()), [][]byte{b[:]}, 0, unix.RWF_NOWAIT); !errors.Is(err, unix.EAGAIN) {
		return
	}
	ra.mu.Lock()
	defer ra.mu.Unlock()
	ra.advance(r, false)
}

// advance finds r in the listings and queues the files after it, as far
// as its listing's window reaches.
func (ra *readAhead) advance(r view.Ref, foreseen bool) {
	l, i := ra.find(r)
	if l == nil {
		return
	}
	ra.current = l
	switch {
	case i >= l.end:
		// Past the window, or a listing where nothing was opened yet.
		l.end, l.size = i+1, aheadMin
	case foreseen:
		l.size = min(2*l.size, aheadMax)
	}
	l.next = i + 1
	ra.coldRead = ra.now()
	if l.end < l.next+l.size/2 {
		ra.queueAhead(l)
	}
}

// queueAhead queues the files of l's window that are not queued yet.
func (ra *readAhead) queueAhead(l *listing) {
	for j := max(l.end, l.next); j < min(l.next+l.size, len(l.files)); j++ {
		ra.queue = append(ra.queue, l.files[j])
	}
	l.end = l.next + l.size
	for ; ra.workers < aheadWorkers && ra.workers < len(ra.queue); ra.workers++ {
		go ra.work()
	}
}

// find returns the listing that holds r, and r's index there, looking
// just after the last file opened in each listing, the current one first.
func (ra *readAhead) find(r view.Ref) (*listing, int) {
	at := func(l *listing) int {
		end := min(l.next+skipAhead, len(l.files))
		if i := slices.Index(l.files[l.next:end], r); i >= 0 {
			return l.next + i
		}
		return -1
	}
	if ra.current != nil {
		if i := at(ra.current); i >= 0 {
			return ra.current, i
		}
	}
	for k := len(ra.listings) - 1; k >= 0; k-- {
		if l := ra.listings[k]; l != ra.current {
			if i := at(l); i >= 0 {
				return l, i
			}
		}
	}
	return nil, 0
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
	ra.listings = nil
	ra.current = nil
}
