package pipeline

import (
	"log/slog"
	"strings"

	"github.com/duplex-cdc/duplex/capture"
)

// reportUnmapped counts, and logs once per table and capture session, a
// change of a table that no entity maps for the source. The capture names
// a partition of a mapped table by that table, so such a change comes from
// a table the publication publishes beyond the mapping (a user-made
// publication, or an entity removed from the mapping) or from a partition
// no longer attached to a mapped table when its change was read: it puts
// nothing on the bus, but never silently (SourceCounts.Unmapped,
// duplex_source_unmapped_changes_total). duplex's own schema is left out.
func (p *producer) reportUnmapped(ch *capture.Change) {
	system := p.src.System()
	tables := []string{ch.QualifiedTable()}
	if ch.Op == capture.Truncate {
		tables = ch.Tables
	}
	for _, t := range tables {
		if strings.HasPrefix(t, "duplex.") || p.cfg.Mapping.Source(system, t) != nil {
			continue
		}
		p.cfg.Stats.update(func(s *SourceCounts) {
			if s.Unmapped == nil {
				s.Unmapped = map[string]int64{}
			}
			s.Unmapped[t]++
		})
		if p.unmappedSeen == nil {
			p.unmappedSeen = map[string]bool{}
		}
		if !p.unmappedSeen[t] {
			p.unmappedSeen[t] = true
			p.log.Warn("captured a change of a table that no entity maps; it is not replicated (remove the table from the publication if that is intended, or map it)",
				slog.String("source", system), slog.String("table", t), slog.String("op", ch.Op.String()), slog.String("partition", ch.Partition))
		}
	}
}
