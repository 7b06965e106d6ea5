package testimage

import (
	"archive/tar"
	"fmt"
)

// filesPerDir bounds directory sizes in Synthetic layers, about what a
// large real directory such as /usr/lib holds.
const filesPerDir = 1000

// Synthetic returns n layers of perLayer regular files each, generated
// while they are written so that a million entries never sit in memory.
// All layers fill the same directories, dir00000/, dir00001/, ..., so the
// directories merge across every layer, while file names differ per layer
// and every path is in exactly one layer.
func Synthetic(n, perLayer int, c Compression) []Layer {
	ls := make([]Layer, n)
	for i := range ls {
		ls[i] = Layer{Compression: c, Stream: func(tw *tar.Writer) error {
			for f := 0; f < perLayer; f++ {
				dir := fmt.Sprintf("dir%05d", f/filesPerDir)
				if f%filesPerDir == 0 {
					if err := Dir(dir, 0o755).AddTo(tw); err != nil {
						return err
					}
				}
				name := fmt.Sprintf("%s/l%02d-f%07d", dir, i, f)
				if err := File(name, name+"\n").AddTo(tw); err != nil {
					return err
				}
			}
			return nil
		}}
	}
	return ls
}
