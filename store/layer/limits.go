package layer

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// expansionEnv configures how far a layer may expand: RATIO:ALLOWANCE,
// so that a layer may hold RATIO times its compressed size plus ALLOWANCE
// bytes (a K, M, G or T suffix counts in powers of 1024), or "off".
const expansionEnv = "LAYERFS_EXPANSION_LIMIT"

// The default lets a real layer through with room to spare (a Debian
// base layer expands about 3 times, text and binaries rarely beyond 10)
// and stops compression bombs: gzip reaches about 1000 times, and a sparse
// tar header claims any size in a few hundred bytes.
const (
	defaultExpansionRatio     = 100
	defaultExpansionAllowance = 1 << 30
)

// ExpansionLimit is the most a layer of compressed size blobSize may
// expand to, in uncompressed stream and in the sum of its file sizes;
// 0 for no limit.
func ExpansionLimit(blobSize int64) (int64, error) {
	ratio, allowance := int64(defaultExpansionRatio), int64(defaultExpansionAllowance)
	if v := os.Getenv(expansionEnv); v != "" {
		if v == "off" {
			return 0, nil
		}
		r, a, ok := strings.Cut(v, ":")
		var err error
		if ratio, err = strconv.ParseInt(r, 10, 64); err != nil || ratio < 0 {
			return 0, fmt.Errorf("%s=%q: the ratio is not a whole number", expansionEnv, v)
		}
		if ok {
			if allowance, err = parseBytes(a); err != nil {
				return 0, fmt.Errorf("%s=%q: %w", expansionEnv, v, err)
			}
		}
	}
	limit := allowance
	if blobSize > 0 && ratio > 0 {
		if blobSize > (1<<62)/ratio {
			return 0, nil
		}
		limit += ratio * blobSize
	}
	return limit, nil
}

func parseBytes(s string) (int64, error) {
	shift := 0
	if i := strings.IndexAny(s, "KMGT"); i >= 0 && i == len(s)-1 {
		shift = 10 * (strings.IndexByte("KMGT", s[i]) + 1)
		s = s[:i]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("the allowance %q is not a size in bytes", s)
	}
	return n << shift, nil
}
