package postgres

import "testing"

// TestWidenXid: a 32-bit transaction ID is placed within 2^31 of the
// snapshot's xmax, on either side, across an epoch boundary too.
func TestWidenXid(t *testing.T) {
	const epoch = uint64(1) << 32
	for _, c := range []struct {
		xmax uint64
		xid  uint32
		want uint64
		ok   bool
	}{
		{1000, 999, 999, true},
		{1000, 1000, 1000, true},
		// Newer than xmax: in progress for other sessions while an
		// older transaction still runs.
		{1000, 1001, 1001, true},
		{1000, 1005, 1005, true},
		// The previous epoch.
		{3*epoch + 5, 0xFFFFFFF0, 2*epoch + 0xFFFFFFF0, true},
		// xmax at the end of an epoch, the transaction in the next.
		{3*epoch - 2, 4, 3*epoch + 4, true},
		// 2^31 - 1 older.
		{5 * epoch, 1<<31 + 1, 4*epoch + 1<<31 + 1, true},
		// Before the first epoch.
		{10, 0xFFFFFFF0, 0, false},
		{10, 2, 0, false},
	} {
		got, ok := widenXid(c.xmax, c.xid)
		if got != c.want || ok != c.ok {
			t.Errorf("widenXid(%d, %d) = %d, %v; want %d, %v", c.xmax, c.xid, got, ok, c.want, c.ok)
		}
	}
}
