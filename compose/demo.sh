#!/usr/bin/env bash
# Starts the three-node demo: n1 with `ccm init`, n2 and n3 with `ccm join`,
# waits until the cluster serves on the VIP, prints `ccm status`. NATS runs
# as `ccm nats-setup` generates it (TLS, a user per node, permissions),
# into compose/.nats (new keys on every start: the demo is disposable).
set -euo pipefail
cd "$(dirname "$0")"
VIP=10.77.0.100
rm -rf .nats
../bin/ccm nats-setup --cluster-id demo --operator-on-nodes --out .nats \
  --node n1=10.77.0.11 --node n2=10.77.0.12 --node n3=10.77.0.13 >/dev/null
for n in n1 n2 n3; do cp .nats/users/monitor.nk .nats/$n/; done # read-only inspection on every node
docker-compose -p ccm-demo up -d
x() { docker exec "ccm-demo-$1" "${@:2}"; }
wait_for() { # seconds description command...
  local until=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > until)); then echo "demo: timed out waiting for $what" >&2; exit 1; fi
    sleep 0.5
  done
}
for n in n1 n2 n3 client; do wait_for 60 "systemd on $n" x $n systemctl is-system-running --wait; done
x client systemctl disable --now nats-server >/dev/null 2>&1
for n in n1 n2 n3; do
  # The node's generated files; its seed readable by group ccm (ccm-elector
  # and ccm-vip run as user ccm).
  docker cp -q .nats/$n/. ccm-demo-$n:/etc/convex/nats/
  x $n sh -c "chgrp ccm /etc/convex/nats/$n.nk && chmod 0640 /etc/convex/nats/$n.nk &&
    cp /etc/convex/nats/nats.conf /etc/nats/nats.conf && systemctl restart nats-server"
done
for n in n1 n2 n3; do
  # The node's generated NATS settings (servers, its user, the CA; the
  # operator's user for the ccm CLI), the rest from flags.
  x $n sh -c 'set -a; . /etc/convex/nats/ccm.env; set +a; exec ccm init --force "$@"' ccm-init \
    --vip-address $VIP --vip-interface eth0 >/dev/null
done
wait_for 60 "the NATS JetStream cluster" sh -c "docker exec ccm-demo-n1 curl -sf http://127.0.0.1:8222/jsz | grep -q '\"leader\"'"
x n1 systemctl enable --now ccm.target >/dev/null 2>&1
wait_for 90 "n1 to serve on $VIP" x client curl -sf -m 1 http://$VIP:3210/version
for n in n2 n3; do
  x $n ccm join
  x $n systemctl enable --now ccm.target >/dev/null 2>&1
done
wait_for 90 "n2 and n3 to catch up" sh -c "docker exec ccm-demo-n1 ccm status --json | grep -c '\"state\": \"following\"' | grep -q 2"
x n1 ccm status
echo
echo "VIP $VIP is served by: $(for n in n1 n2 n3; do x $n ip -o -4 addr show dev eth0 | grep -q " $VIP/" && echo $n; done)"
echo "Write through it:   docker exec ccm-demo-client curl -s -XPOST 'http://$VIP:3210/write?v=hello'"
echo "Switch over:        docker exec ccm-demo-n1 ccm promote --node n2"
echo "Fail over:          docker kill ccm-demo-n2   (then: docker exec ccm-demo-n1 ccm status)"
echo "Read-only NATS:     docker exec ccm-demo-n1 nats --server tls://10.77.0.11:4222 --tlsca /etc/convex/nats/ca.pem \\"
echo "                      --nkey /etc/convex/nats/monitor.nk --inbox-prefix _INBOX_monitor micro ls"
echo "Remove everything:  make demo-down"
