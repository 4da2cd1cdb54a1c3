package pipeline

import "sync"

// Stats holds the counts C of a producer (SourceCounts) or a flow
// (FlowCounts); safe for concurrent use. The counts are written only by
// the pipeline, under the lock, and read only as a copy (Snapshot), so a
// reader never sees a half-made update or shares a map with the writer.
// The zero value is ready to use; a nil *Stats ignores updates.
type Stats[C interface{ Clone() C }] struct {
	mu sync.Mutex
	c  C
}

// update changes the counts under the lock.
func (s *Stats[C]) update(f func(c *C)) {
	if s == nil {
		return
	}
	s.mu.Lock()
	f(&s.c)
	s.mu.Unlock()
}

// Snapshot returns a copy of the counts (maps included).
func (s *Stats[C]) Snapshot() C {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.Clone()
}
