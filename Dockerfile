# syntax=docker/dockerfile:1
#
# duplex container image.
#
#   docker build -t duplex .
#   docker run --rm -e CRM_DSN=... -e ERP_DSN=... duplex
#
# The image carries the order-to-cash example under /etc/duplex; mount your
# own duplex.yaml and mapping.yaml there (or elsewhere, with --config) to run
# another configuration. The default, duplex.yaml, starts the embedded NATS
# server storing under $DUPLEX_DATA_DIR (with the nkeys of duplex's
# identities), so mount a volume there; duplex-nats.yaml connects to
# $NATS_URL instead (see deploy/nats/README.md).
#
# `duplex demo` is not meant for this image: it starts throwaway PostgreSQL
# clusters and needs the PostgreSQL server binaries, which it does not carry.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits do not invalidate this layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/duplex ./cmd/duplex \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/duplex /duplex
COPY examples/order-to-cash/ /etc/duplex/
# distroless has no shell to mkdir with: copy an empty directory owned by
# the nonroot user (65532) for the embedded NATS store.
COPY --from=build --chown=65532:65532 /out/data /var/lib/duplex
ENV DUPLEX_DATA_DIR=/var/lib/duplex
VOLUME ["/var/lib/duplex"]
USER nonroot:nonroot
# Metrics. (The embedded NATS server listens on 127.0.0.1 only.)
EXPOSE 9464
ENTRYPOINT ["/duplex"]
CMD ["run", "--config", "/etc/duplex/duplex.yaml"]
