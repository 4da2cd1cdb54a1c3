package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// Hold is an entity whose source table stopped fitting the mapping: its
// changes from Since on are held back (not published, not lost) until the
// mapping or the table is fixed and duplex restarted.
type Hold struct {
	Entity string
	Since  capture.LSN
	Reason string
	At     time.Time
	// Fixed says the table fits the mapping again (set by Holds.Held).
	Fixed bool
}

// Holding is what a source's holds are as a capture session starts.
type Holding struct {
	// Holds are the entities held, each with Fixed computed against the
	// table as it is now.
	Holds []Hold
	// Now is the source's current WAL position: the changes of a fixed
	// hold are read again up to it.
	Now capture.LSN
	// Redone maps each entity whose hold was released to the highest
	// position up to which its held changes were read again and made
	// durable downstream. That WAL was handled: when a slot sends it again
	// (PostgreSQL saves a slot's position only at checkpoints, so a crash
	// restart takes it back), pgoutput decodes it with the table as it was
	// then, still without the missing column, and that is no new drop.
	Redone map[string]capture.LSN
}

// Holds keeps the holds of one source durably.
type Holds interface {
	Held(ctx context.Context) (Holding, error)
	// Hold records a hold; an entity already held keeps its first one.
	Hold(ctx context.Context, h Hold) error
	// Release forgets the hold of entity and records, in the same
	// write, that its changes up to redoneUntil were read again and are
	// durable downstream (Holding.Redone).
	Release(ctx context.Context, entity string, redoneUntil capture.LSN) error
}

// loadHolds reads the holds at the start of a session: a hold whose table
// fits the mapping again is read again leniently; one that does not keeps
// the source from advancing past it.
func (p *producer) loadHolds(ctx context.Context) error {
	p.held, p.redo, p.resent = map[string]Hold{}, map[string]Hold{}, map[string]bool{}
	if p.cfg.Holds == nil {
		return nil
	}
	hs, err := p.cfg.Holds.Held(ctx)
	if err != nil {
		return fmt.Errorf("read held entities: %w", err)
	}
	p.redone = hs.Redone
	var retain capture.LSN
	for _, h := range hs.Holds {
		if h.Fixed {
			p.redo[h.Entity] = h
			p.redoUntil = hs.Now
			p.log.Info("held entity fits the mapping again: its held changes are read again and applied", slog.String("entity", h.Entity),
				slog.String("since", h.Since.String()), slog.String("until", hs.Now.String()))
			continue
		}
		p.held[h.Entity] = h
		if retain == 0 || h.Since < retain {
			retain = h.Since
		}
		p.log.Error("entity held: its changes are not published until the mapping or the table is fixed and duplex restarted",
			slog.String("entity", h.Entity), slog.String("since", h.Since.String()), slog.String("reason", h.Reason))
	}
	if r, ok := p.src.(Retainer); ok {
		r.Retain(retain)
	}
	p.cfg.Stats.update(func(s *SourceCounts) {
		s.Held = map[string]string{}
		for e, h := range p.held {
			s.Held[e] = h.Reason
		}
	})
	return nil
}

// handledBefore says whether a change that does not fit the mapping (se)
// is one the slot sends again from WAL already handled: at or below the
// position up to which a released hold of its entity was read again. Such
// a change was published when the hold was read again; it is left out
// (as it was while held) rather than held anew.
func (p *producer) handledBefore(c *capture.Chunk, se *transform.SchemaError) bool {
	until, ok := p.redone[se.Entity]
	if !ok || c.Tx.CommitLSN > until {
		return false
	}
	if !p.resent[se.Entity] {
		p.resent[se.Entity] = true
		p.log.Info("the slot sends again changes of a released hold, decoded with the table as it was then; they were read again and published before, so the entity is not held anew",
			slog.String("entity", se.Entity), slog.String("commit_lsn", c.Tx.CommitLSN.String()), slog.String("redone_until", until.String()))
	}
	return true
}

// keepVersions keeps the events a held change makes when read leniently
// (without the missing column), for the version recorder alone: they are
// not published. A local write to a shared field of a held entity reaches
// the other system only once the hold is released, but the sink into this
// same database compares the other system's writes with it now, and waits
// until this capture records the write's version (sinks/postgres,
// resolveShared). Recorded as it is read, the write takes part in the
// last-writer-wins rule at once, on both sides: here against incoming
// writes, there (read again after the fix, by its commit time) against
// the other system's recorded version. Not recorded, the other system's
// write would wait for the fix, up to the flow's max_wait, and then be
// dead-lettered although nothing is wrong with it. A change that cannot
// be read even leniently (a value error) is not recorded, as it would not
// be without the hold.
func (p *producer) keepVersions(c *capture.Chunk, index int, ch *capture.Change) {
	if p.cfg.Versions == nil || c.Tx.Applied {
		return
	}
	evs, err := p.cfg.Mapping.NormalizeHeld(p.src.System(), &c.Tx, index, ch)
	if err != nil {
		return
	}
	p.heldEvents = append(p.heldEvents, evs...)
}

// versionsToRecord is what the chunk's versions are recorded from: the
// events published and those of held changes (keepVersions).
func (p *producer) versionsToRecord(published []transform.Event) []transform.Event {
	if len(p.heldEvents) == 0 {
		return published
	}
	return append(slices.Clip(published), p.heldEvents...)
}

// hold starts holding an entity whose table no longer fits the mapping.
func (p *producer) hold(ctx context.Context, c *capture.Chunk, se *transform.SchemaError) error {
	h := Hold{Entity: se.Entity, Since: c.Tx.CommitLSN, Reason: se.Error(), At: time.Now().UTC()}
	if err := p.cfg.Holds.Hold(ctx, h); err != nil {
		return fmt.Errorf("hold entity %s: %w", se.Entity, err)
	}
	if r, ok := p.src.(Retainer); ok {
		min := h.Since
		for _, o := range p.held {
			if o.Since < min {
				min = o.Since
			}
		}
		r.Retain(min)
	}
	p.held[se.Entity] = h
	p.log.Error("entity held: its changes are not published until the mapping or the table is fixed and duplex restarted; other entities go on",
		slog.String("entity", se.Entity), slog.String("since", h.Since.String()), slog.String("reason", h.Reason))
	p.cfg.Stats.update(func(s *SourceCounts) {
		if s.Held == nil {
			s.Held = map[string]string{}
		}
		s.Held[se.Entity] = h.Reason
	})
	return nil
}

func (p *producer) inRedo(tx *capture.TxInfo) bool {
	if len(p.redo) == 0 || tx.Snapshot || tx.CommitLSN > p.redoUntil {
		return false
	}
	for _, h := range p.redo {
		if tx.CommitLSN >= h.Since {
			return true
		}
	}
	return false
}

// releaseHolds forgets the holds that were read again once everything up
// to redoUntil is durable.
func (p *producer) releaseHolds(ctx context.Context, durable capture.LSN) {
	if len(p.redo) == 0 || durable < p.redoUntil || p.released.Load() {
		return
	}
	for e := range p.redo {
		if err := p.cfg.Holds.Release(ctx, e, p.redoUntil); err != nil {
			p.log.Warn("release held entity", slog.String("entity", e), slog.Any("error", err))
			return
		}
		p.log.Info("held entity caught up", slog.String("entity", e))
	}
	p.released.Store(true)
}
