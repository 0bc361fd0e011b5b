#!/usr/bin/env bash
# Builds the node image ccm-node:dev from ccm-base:bookworm-3: static ccm
# binaries, the stand-in backend, nats-server and the nats CLI (built from
# their Go modules) and the systemd units. Run from the repository root (make images).
set -euo pipefail
IMAGE=${IMAGE:-ccm-node:dev}
NATS_SERVER_VERSION=${NATS_SERVER_VERSION:-v2.15.2}
NATSCLI_VERSION=${NATSCLI_VERSION:-v0.5.0}
root=$(pwd)
ctx=$(mktemp -d /var/tmp/ccm-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin" "$ctx/units"
cp bin/* "$ctx/bin/"
CGO_ENABLED=0 go build -trimpath -o "$ctx/bin/standin" ./itest/standin
GOBIN="$ctx/bin" CGO_ENABLED=0 go install "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION"
GOBIN="$ctx/bin" CGO_ENABLED=0 go install "github.com/nats-io/natscli/nats@$NATSCLI_VERSION"
cp -r systemd/*.service systemd/ccm.target systemd/ccm-.service.d "$ctx/units/"
rm "$ctx/units/convex-backend.service"
cp deploy/images/standin-backend.service "$ctx/units/convex-backend.service"
cp deploy/images/nats-server.service "$ctx/units/"
cp deploy/images/nats.conf deploy/polkit/50-ccm-backend.rules "$ctx/"
docker build -q -t "$IMAGE" -f "$root/deploy/images/node.Dockerfile" "$ctx"
echo "built $IMAGE"
