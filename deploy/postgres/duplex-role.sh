#!/bin/sh
# Runs once, when the postgres image initialises an empty data directory
# (docker-entrypoint-initdb.d, after 10-<db>.sql made the schema): creates
# duplex's login role for this database from
# examples/order-to-cash/<db>-role.sql (mounted at /duplex), with the
# password in $DUPLEX_ROLE_PASSWORD. docker-compose.yml mounts it into the
# crm and erp services.
psql -q -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
	-v password="$DUPLEX_ROLE_PASSWORD" -f "/duplex/$POSTGRES_DB-role.sql"
