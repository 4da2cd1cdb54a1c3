#!/bin/sh
# Writes, to standard output, the secrets docker-compose.yml reads from
# .env: random PostgreSQL passwords (the superuser's, and those of
# duplex's roles duplex_crm and duplex_erp), and one user nkey per duplex identity
# (the operator, the capture of each source, each flow), as the public key
# the NATS server checks (DUPLEX_NATS_<ID>_NKEY) and the seed duplex signs
# with (DUPLEX_NATS_<ID>_SEED).
#
#   deploy/nats/gen-env.sh > .env && chmod 600 .env
#
# Needs `nk` (github.com/nats-io/nkeys/nk) on the PATH, or Go to run it.
# The seeds are secrets: keep .env out of version control and out of
# images (.gitignore and .dockerignore list it).
set -eu

nk() {
	if command -v nk >/dev/null 2>&1; then
		command nk "$@"
	else
		go run github.com/nats-io/nkeys/nk@v0.4.16 "$@"
	fi
}

printf '# Written by deploy/nats/gen-env.sh on %s. Secrets: keep private.\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
printf 'POSTGRES_PASSWORD=%s\n' "$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
printf 'DUPLEX_CRM_PASSWORD=%s\n' "$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
printf 'DUPLEX_ERP_PASSWORD=%s\n' "$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
# The key of personal fields (pii.key_env), id k1: 32 random bytes in hex.
printf 'DUPLEX_PII_KEYS=k1 %s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
for id in OPERATOR CAPTURE_CRM CAPTURE_ERP FLOW_TO_ERP FLOW_TO_CRM; do
	out=$(nk -gen user -pubout 2>&1)
	seed=$(printf '%s\n' "$out" | grep -E '^SU[A-Z2-7]{56}$' | head -n 1)
	pub=$(printf '%s\n' "$out" | grep -E '^U[A-Z2-7]{55}$' | head -n 1)
	if [ -z "$seed" ] || [ -z "$pub" ]; then
		echo "gen-env.sh: nk gave no user nkey: $out" >&2
		exit 1
	fi
	printf 'DUPLEX_NATS_%s_SEED=%s\nDUPLEX_NATS_%s_NKEY=%s\n' "$id" "$seed" "$id" "$pub"
done
