// Package deploy holds no code: this folder holds the tests that check the
// deployment files at the repository root (docker-compose.yml, Dockerfile,
// .dockerignore), the NATS server configuration (nats/nats-server.conf,
// against the permissions package pipeline derives) and the init script
// that gives compose's databases duplex's least-privilege roles
// (postgres/duplex-role.sh) against the
// repository, so that a renamed example, command or environment variable
// fails `go test` rather than `docker compose up`.
package deploy
