package erofs

import (
	"errors"
	"io/fs"
	"sync"

	"golang.org/x/sys/unix"
)

// prefetcher opens the regular files go-erofs will copy, in the order it
// copies them, a bounded window ahead of it, and asks the kernel to read
// each one in (POSIX_FADV_WILLNEED). go-erofs copies one file at a time,
// so on a cold cache every object costs a disk round trip (its inode,
// then its data) while the disk's queue sits nearly empty; with several
// files in flight the disk works in parallel and the copy finds the
// bytes in the page cache. go-erofs lays out file data in the order of
// its walk of the source (sorted names, depth first), which is the order
// Open is called in, so that order is the prefetcher's.
type prefetcher struct {
	mu   sync.Mutex
	cond *sync.Cond
	// files are in walk order; ends[i] is the total size of files[:i+1].
	files []*lazyFile
	ends  []int64
	// next is the first file no worker has taken; reading the one go-erofs
	// reads now.
	next, reading int
	// window is how many files ahead of the reader may be open: at most
	// prefetchFiles, fewer where the process may open few descriptors,
	// and halved each time an open meets the limit.
	window  int
	stopped bool
	workers sync.WaitGroup
}

type fileState uint8

const (
	fileWaiting fileState = iota // nobody has opened it
	fileOpening                  // a worker is opening it
	fileOpened                   // a worker opened it: opened, openErr
	fileTaken                    // the reader has it
)

// The window: enough files and bytes in flight to keep a disk busy,
// bounded so that a large image neither holds many descriptors nor
// pushes its own prefetched bytes out of the page cache.
const (
	prefetchWorkers = 8
	prefetchFiles   = 256
	prefetchBytes   = 64 << 20
)

func newPrefetcher() *prefetcher {
	p := &prefetcher{window: prefetchWindow()}
	p.cond = sync.NewCond(&p.mu)
	for range prefetchWorkers {
		p.workers.Add(1)
		go p.work()
	}
	return p
}

// prefetchWindow is the window the limit on open descriptors allows:
// half of what is left of it after a margin for everything else the
// build holds open (the output, the store, each layer's index).
func prefetchWindow() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > 1<<20 {
		return prefetchFiles
	}
	return max(1, min(prefetchFiles, (int(lim.Cur)-prefetchMargin)/2))
}

const prefetchMargin = 64

// outOfDescriptors tells whether err is an open refused for want of a
// file descriptor: the process's (EMFILE) or the system's (ENFILE).
func outOfDescriptors(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE)
}

func (p *prefetcher) add(l *lazyFile) {
	p.mu.Lock()
	defer p.mu.Unlock()
	end := l.info.Size()
	if n := len(p.ends); n > 0 {
		end += p.ends[n-1]
	}
	l.index = len(p.files)
	p.files = append(p.files, l)
	p.ends = append(p.ends, end)
	p.cond.Broadcast()
}

// inWindow says whether file i may be opened while the reader is at
// p.reading. Called with p.mu held.
func (p *prefetcher) inWindow(i int) bool {
	if i <= p.reading {
		return true
	}
	return i-p.reading <= p.window && p.ends[i]-p.ends[p.reading] <= prefetchBytes
}

func (p *prefetcher) work() {
	defer p.workers.Done()
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		for !p.stopped && (p.next >= len(p.files) || !p.inWindow(p.next)) {
			p.cond.Wait()
		}
		if p.stopped {
			return
		}
		l := p.files[p.next]
		p.next++
		if l.state != fileWaiting {
			continue
		}
		l.state = fileOpening
		p.mu.Unlock()
		f, err := l.open()
		if err == nil {
			readAhead(f)
		}
		p.mu.Lock()
		if outOfDescriptors(err) {
			// Opening ahead is only a speed-up: the reader opens this
			// one itself when it gets there, and fewer are opened
			// ahead from now on.
			p.window = max(1, p.window/2)
			l.state = fileWaiting
			p.cond.Broadcast()
			continue
		}
		if l.index < p.reading {
			// The reader passed it by while it was being opened (see
			// take): closed, or it would stay open behind the window.
			if f != nil {
				f.Close()
			}
			l.state = fileWaiting
			continue
		}
		l.opened, l.openErr, l.state = f, err, fileOpened
		p.cond.Broadcast()
	}
}

// readAhead asks the kernel to start reading f in; it does not wait for
// the disk. A file that is not an OS file is left to its first read.
func readAhead(f fs.File) {
	if osf, ok := f.(interface{ Fd() uintptr }); ok {
		// Advice only: a failure costs speed, never bytes.
		_ = unix.Fadvise(int(osf.Fd()), 0, 0, unix.FADV_WILLNEED)
	}
}

// take gives the reader its file: the one a worker opened, waiting for a
// worker still opening it, or opened here. It moves the window to l.
func (p *prefetcher) take(l *lazyFile) (fs.File, error) {
	p.mu.Lock()
	// Files the reader passed by are those go-erofs inlines in their
	// inodes and copies later, with the metadata: they are closed, or
	// they would stay open behind the window, and opened again then.
	for i := p.reading + 1; i < l.index; i++ {
		if s := p.files[i]; s.state == fileOpened {
			if s.opened != nil {
				s.opened.Close()
			}
			s.opened, s.openErr, s.state = nil, nil, fileWaiting
		}
	}
	p.reading = l.index
	p.cond.Broadcast()
	for l.state == fileOpening {
		p.cond.Wait()
	}
	state := l.state
	l.state = fileTaken
	f, err := l.opened, l.openErr
	l.opened = nil
	p.mu.Unlock()
	if state == fileOpened {
		return f, err
	}
	f, err = l.open()
	if outOfDescriptors(err) && p.release() > 0 {
		// The files opened ahead held the descriptors this one needs.
		f, err = l.open()
	}
	return f, err
}

// release closes the files opened ahead and not taken yet, to be opened
// again when their turn comes, and shrinks the window; it returns how
// many it closed.
func (p *prefetcher) release() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.files[p.reading+1:] {
		if s.state == fileOpened && s.opened != nil {
			s.opened.Close()
			s.opened, s.openErr, s.state = nil, nil, fileWaiting
			n++
		}
	}
	p.window = max(1, p.window/2)
	return n
}

// stop ends the workers and closes what they opened that was never read,
// as when the build fails part way.
func (p *prefetcher) stop() {
	p.mu.Lock()
	p.stopped = true
	p.cond.Broadcast()
	p.mu.Unlock()
	p.workers.Wait()
	for _, l := range p.files {
		if l.state == fileOpened && l.opened != nil {
			l.opened.Close()
			l.opened = nil
		}
	}
}
