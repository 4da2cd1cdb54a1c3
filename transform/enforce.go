package transform

import (
	"fmt"
	"time"
)

// RefusedError is an event a flow refuses to apply because it breaks the
// mapping: the capture of its source would never have produced it. It
// names the target system, entity, key and field (when one is to blame)
// and the reason.
type RefusedError struct {
	System string // the target
	Source string // the flow's source
	Entity string
	Key    string
	Field  string
	Reason string
}

func (e *RefusedError) Error() string {
	s := fmt.Sprintf("refused by the flow %s -> %s: entity %s key %s", e.Source, e.System, e.Entity, e.Key)
	if e.Field != "" {
		s += " field " + e.Field
	}
	return s + ": " + e.Reason
}

// CheckIncoming re-checks an event a flow from source into target is
// about to apply against the mapping, whatever its capture checked (the
// bus is not trusted; DESIGN.md, decision 15):
//
//   - its schema version is known and its source is the flow's source;
//   - the source publishes the entity and the target has a table for it;
//   - an upsert carries only fields the source owns or shares (and key
//     fields): a field the target owns alone is never written from the
//     other side;
//   - a delete comes from the system that owns the entity's key (an
//     entity lives and dies there);
//   - a truncate only where the entity says truncate: propagate;
//   - the version of a shared field (the commit time, or the recorded
//     version of a copied row) is not later than now plus maxSkew: a
//     version dated years ahead would win every later write.
//
// now is the flow's clock; maxSkew the clock skew allowed between the
// source and the flow (0: one minute). Decimal values are bounded where
// they are read (parseDecimal). Errors: *RefusedError.
func (m *Mapping) CheckIncoming(ev *Event, source, target string, now time.Time, maxSkew time.Duration) error {
	refuse := func(field, format string, args ...any) error {
		return &RefusedError{System: target, Source: source, Entity: ev.Entity, Key: truncateText(ev.Key, 64), Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	if ev.Version < 1 || ev.Version > SchemaVersion {
		return refuse("", "event schema version %d is not one this duplex knows (1 to %d)", ev.Version, SchemaVersion)
	}
	if ev.Source != source {
		return refuse("", "the event names source %q, but the flow carries %s's changes only", truncateText(ev.Source, 32), source)
	}
	e := m.Entity(ev.Entity)
	if e == nil {
		return refuse("", "the mapping has no such entity")
	}
	if !e.Publishes(source) || e.Tables[target] == nil {
		return refuse("", "the mapping does not carry this entity from %s to %s", source, target)
	}
	kown := e.KeyOwner()
	ownsKey := kown == source || kown == OwnerBoth
	switch ev.Op {
	case OpDelete:
		if !ownsKey {
			return refuse("", "a delete from %s, but %s owns the entity's key: an entity lives and dies in the system that owns its key", source, kown)
		}
	case OpTruncate:
		if e.Truncate != "propagate" {
			return refuse("", "a truncate, but the mapping does not propagate truncates of this entity (truncate: %s)", truncateRefuse(e.Truncate))
		}
	case OpUpsert:
		if maxSkew <= 0 {
			maxSkew = time.Minute
		}
		limit := now.Add(maxSkew)
		for name := range ev.Data {
			f := e.Field(name)
			if f == nil {
				continue // not in the mapping: Denormalize writes nothing of it
			}
			if !carries(e, f, source) {
				return refuse(name, "the field is owned by %s: a flow from %s never writes it", f.Owner, source)
			}
			if f.Owner != OwnerBoth {
				continue
			}
			at, what := ev.Pos.CommitTime, "commit time"
			if v, ok := ev.Versions[name]; ok {
				at, what = v.At, "recorded version"
			}
			if at.After(limit) {
				return refuse(name, "shared field's %s %s is later than now (%s) plus the allowed clock skew %s",
					what, at.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), maxSkew)
			}
		}
	default:
		return refuse("", "unknown operation %q", truncateText(string(ev.Op), 16))
	}
	return nil
}

func truncateRefuse(s string) string {
	if s == "" {
		return "refuse"
	}
	return s
}

// truncateText shortens s for an error: at most n bytes, then "…".
func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
