package erofs

import (
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
	stopped       bool
	workers       sync.WaitGroup
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
	p := &prefetcher{}
	p.cond = sync.NewCond(&p.mu)
	for range prefetchWorkers {
		p.workers.Add(1)
		go p.work()
	}
	return p
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
	return i-p.reading <= prefetchFiles && p.ends[i]-p.ends[p.reading] <= prefetchBytes
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
	return l.open()
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
