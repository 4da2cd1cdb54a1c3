package postgres

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// redact removes a password from a connection error.
func redact(err error) error {
	var pe *pgconn.ConnectError
	if errors.As(err, &pe) && pe.Config != nil && pe.Config.Password != "" {
		return errors.New(strings.ReplaceAll(err.Error(), pe.Config.Password, "xxxxx"))
	}
	return err
}
