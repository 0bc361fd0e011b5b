# A ccm node: systemd as PID 1, nats-server, every ccm daemon and unit,
# and the stand-in backend as convex-backend.service. Built by `make images`
# from a context that deploy/images/node.sh assembles (no registry).
FROM ccm-base:bookworm-3
COPY bin/ /usr/local/bin/
COPY units/ /etc/systemd/system/
COPY nats.conf /etc/nats/nats.conf
COPY 50-ccm-backend.rules /etc/polkit-1/rules.d/
# Users: ccm for the daemons, convex for the backend; the data directories
# belong to ccm with the backend's group (docs/security.md), without the
# setgid bit: the units' RestrictSUIDSGID refuses a directory that copies it.
RUN useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ccm \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin convex \
 && mkdir -p /etc/convex/nats /var/lib/nats \
 && install -d -o ccm -g convex -m 0750 /var/lib/convex /var/lib/convex/replica \
 && install -d -o ccm -g convex -m 0770 /var/lib/convex/data \
 && systemctl enable nats-server.service \
 && systemctl disable haproxy.service
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/sbin/init"]
