package snapshot_test

import (
	"testing"

	"github.com/superfly/ltx"
)

// checksumOf computes the rolling LTX checksum of a database image the
// way ltx does, as an independent check of snapstore's.
func checksumOf(t *testing.T, img []byte) ltx.Checksum {
	t.Helper()
	var sum ltx.Checksum
	for i := 0; i*4096 < len(img); i++ {
		sum = ltx.ChecksumFlag | (sum ^ ltx.ChecksumPage(uint32(i+1), img[i*4096:(i+1)*4096]))
	}
	return sum
}
