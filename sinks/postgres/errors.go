// Error classification: PostgreSQL and network errors mapped to the
// pipeline's kinds (transient, permanent).

package postgres

import (
	"errors"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/duplex-cdc/duplex/pipeline"
)

type permanentErr struct{ error }

func (e *permanentErr) Unwrap() error   { return e.error }
func (e *permanentErr) Permanent() bool { return true }

// unattributed says err is a permanent failure of the data that names no
// event: a set-based statement failed on one of its rows.
func unattributed(err error) bool {
	var ae *pipeline.ApplyError
	return errors.As(err, &ae) && ae.Kind == pipeline.Permanent && ae.Event < 0
}

// notNullViolation returns the column of a not_null_violation (SQLSTATE
// 23502).
func notNullViolation(err error) (string, bool) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23502" {
		return pe.ColumnName, true
	}
	return "", false
}

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// uniqueFailure says err is a permanent failure on a unique violation
// (not the transient retry releaseUnique asks for).
func uniqueFailure(err error) bool {
	var ae *pipeline.ApplyError
	return errors.As(err, &ae) && ae.Kind == pipeline.Permanent && isUniqueViolation(err)
}

// isCardinalityViolation says err is SQLSTATE class 21 (cardinality
// violation): "ON CONFLICT DO UPDATE command cannot affect row a second
// time" when two rows of one statement land on one key.
func isCardinalityViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.HasPrefix(pe.Code, "21")
}

// classify maps an error to the pipeline's kinds: integrity (class 23),
// data (22) and cardinality (21: a statement that would affect one row
// twice; applying it again fails again) errors are permanent; connection
// loss, shutdown, serialization failures, lock timeouts and anything
// unknown are transient.
func classify(err error, ti, ei int) error {
	var ae *pipeline.ApplyError
	if errors.As(err, &ae) {
		return err
	}
	kind := pipeline.Transient
	var pe *pgconn.PgError
	var p interface{ Permanent() bool }
	switch {
	case errors.As(err, &pe):
		switch {
		case strings.HasPrefix(pe.Code, "23"), strings.HasPrefix(pe.Code, "22"), strings.HasPrefix(pe.Code, "21"):
			kind = pipeline.Permanent
		}
	case errors.As(err, &p) && p.Permanent():
		kind = pipeline.Permanent
	case pgconn.Timeout(err), isNetErr(err):
		kind = pipeline.Transient
	}
	return &pipeline.ApplyError{Kind: kind, Tx: ti, Event: ei, Err: err}
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne)
}
