package layer

import (
	"archive/tar"
	"errors"
	"fmt"
	"strings"
)

// Limits of Linux on what one file may carry (XATTR_NAME_MAX,
// XATTR_SIZE_MAX, XATTR_LIST_MAX, PATH_MAX): an entry beyond them could
// not be written by any runtime, nor read whole through the mount.
const (
	maxXattrName  = 255
	maxXattrValue = 64 << 10
	// maxXattrList bounds what listxattr returns: every name and its NUL.
	maxXattrList  = 64 << 10
	maxLinkTarget = 4095
)

// checkRepresentable refuses a tar entry whose metadata Linux cannot hold,
// or that is overlayfs's own whiteout form rather than the image's.
func checkRepresentable(hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeSymlink && len(hdr.Linkname) > maxLinkTarget {
		return fmt.Errorf("symlink target is %d bytes, longer than %d", len(hdr.Linkname), maxLinkTarget)
	}
	if hdr.Typeflag == tar.TypeChar && hdr.Devmajor == 0 && hdr.Devminor == 0 {
		return errors.New("a 0/0 character device is overlayfs's whiteout form, which a runtime would apply as a whiteout; an image whites out with .wh. files")
	}
	list := 0
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, xattrPAX)
		if !ok {
			continue
		}
		switch {
		case name == "":
			return errors.New("xattr with an empty name")
		case len(name) > maxXattrName:
			return fmt.Errorf("xattr %.20q... name is %d bytes, longer than %d", name, len(name), maxXattrName)
		case len(v) > maxXattrValue:
			return fmt.Errorf("xattr %q value is %d bytes, longer than %d", name, len(v), maxXattrValue)
		}
		list += len(name) + 1
	}
	if list > maxXattrList {
		return fmt.Errorf("xattr names take %d bytes, more than %d", list, maxXattrList)
	}
	return nil
}
