// Package deploy holds no code: this folder holds the tests that check the
// deployment files at the repository root (docker-compose.yml, Dockerfile,
// .dockerignore) and the NATS server configuration (nats/nats-server.conf,
// against the permissions package pipeline derives) against the
// repository, so that a renamed example, command or environment variable
// fails `go test` rather than `docker compose up`.
package deploy
