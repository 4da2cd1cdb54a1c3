package pgstate

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// RecordSigningKey records that a capture of system signs with
// publicKey (an nkey, "U…"), from host. Recording it again is a no-op.
func RecordSigningKey(ctx context.Context, q Querier, system, publicKey, host string) error {
	if _, err := q.Exec(ctx, `INSERT INTO duplex.signing_keys (system, public_key, host) VALUES ($1, $2, $3) ON CONFLICT (system, public_key) DO NOTHING`,
		system, publicKey, host); err != nil {
		return fmt.Errorf("record signing key of %s: %w", system, err)
	}
	return nil
}

// SigningKeys returns the public keys recorded for system's captures,
// oldest first.
func SigningKeys(ctx context.Context, q Querier, system string) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT public_key FROM duplex.signing_keys WHERE system = $1 ORDER BY added_at, public_key`, system)
	if err != nil {
		return nil, fmt.Errorf("read signing keys of %s: %w", system, err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read signing keys of %s: %w", system, err)
	}
	return keys, nil
}
