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

// TestTxSnapshot_Ended: what a snapshot says of a decoded transaction:
// ended below xmin, and between xmin and xmax unless in xip; not ended
// from xmax on (latestCompletedXid + 1: a committing transaction not yet
// out of the proc array is there or in xip), across an epoch boundary too.
func TestTxSnapshot_Ended(t *testing.T) {
	for _, c := range []struct {
		name string
		snap string
		xid  uint32
		want bool
	}{
		{"below xmin", "100:105:100,103", 99, true},
		{"at xmin, in xip", "100:105:100,103", 100, false},
		{"between, not in xip", "100:105:100,103", 101, true},
		{"between, in xip", "100:105:100,103", 103, false},
		{"at xmax", "100:105:100,103", 105, false},
		{"above xmax", "100:105:100,103", 110, false},
		{"nothing running", "105:105:", 104, true},
		{"nothing running, at xmax", "105:105:", 105, false},
		{"previous epoch", "12884901893:12884901893:", 0xFFFFFFF0, true},
		{"next epoch, in xip", "12884901886:12884901892:12884901890", 2, false},
		{"next epoch, at xmax", "12884901886:12884901892:12884901890", 4, false},
		{"next epoch, ended", "12884901886:12884901892:12884901890", 3, true},
		{"too old to widen", "10:10:", 2, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := parseSnapshot(c.snap)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.ended(c.xid); got != c.want {
				t.Errorf("%s ended(%d) = %v, want %v", c.snap, c.xid, got, c.want)
			}
		})
	}
	var none *txSnapshot
	if none.ended(100) {
		t.Errorf("a nil snapshot says a transaction ended")
	}
	for _, bad := range []string{"", "1:2", "a:2:", "1:b:", "1:2:x", "1:2:3,,4", "4611686018427387904:2:"} {
		if _, err := parseSnapshot(bad); err == nil {
			t.Errorf("parseSnapshot(%q): no error", bad)
		}
	}
}
