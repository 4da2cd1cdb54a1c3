package pgstate

import (
	"context"
	"crypto/rand"
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

// FieldHashKey returns the key of duplex.field_versions' hashes kept in
// this database, creating it (32 random bytes) when there is none yet;
// concurrent first calls get the same key.
func FieldHashKey(ctx context.Context, q Querier) ([]byte, error) {
	fresh := make([]byte, 32)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("field hash key: %w", err)
	}
	if _, err := q.Exec(ctx, `INSERT INTO duplex.field_hash_key (id, key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING`, fresh); err != nil {
		return nil, fmt.Errorf("field hash key: %w", err)
	}
	var key []byte
	if err := q.QueryRow(ctx, `SELECT key FROM duplex.field_hash_key WHERE id = 1`).Scan(&key); err != nil {
		return nil, fmt.Errorf("field hash key: %w", err)
	}
	return key, nil
}
