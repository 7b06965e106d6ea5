package view_test

import (
	"context"
	"fmt"
	"io/fs"
	"log"
	"os"

	"github.com/layerfs/layerfs/source/archive"
	"github.com/layerfs/layerfs/store"
	"github.com/layerfs/layerfs/view"
)

// A Go program reads an image of a store as an io/fs file system, with
// no mount: here the sample image the repository carries, imported into
// a new store. The lease keeps what the view reads from a gc that another
// process may run meanwhile; the view is closed before the store, whose
// objects its files are opened from (the deferred calls run in that
// order).
func ExampleNewFS() {
	root, err := os.MkdirTemp("", "layerfs-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(root)
	// store.Open, for a store that holds the image already.
	s, err := store.OpenForWriting(root)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	if _, err := archive.Import(context.Background(), s, "../testdata/sample", archive.Options{}); err != nil {
		log.Fatal(err)
	}

	// A name, a digest, or layer digests; s.ResolvePlatform for another
	// platform of an image index than the host's.
	target, err := s.Resolve([]string{"sample"})
	if err != nil {
		log.Fatal(err)
	}
	release, err := s.LeaseReading(context.Background(), target, "example")
	if err != nil {
		log.Fatal(err)
	}
	defer release()
	kind := view.Merged
	if target.Single {
		kind = view.Single // one layer given by digest, as it was built
	}
	v, err := s.OpenView(target.Digests(), kind)
	if err != nil {
		log.Fatal(err)
	}
	defer v.Close()
	fsys := view.NewFS(v, view.ByName(s.OpenObject))

	hostname, err := fs.ReadFile(fsys, "etc/hostname")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("etc/hostname: %s", hostname)
	err = fs.WalkDir(fsys, "var", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Println(info.Mode(), p)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// etc/hostname: sample
	// drwxr-xr-x var
	// drwxr-xr-x var/log
	// -rw-r----- var/log/app.log
}
