# A ccm node: systemd as PID 1, nats-server, every ccm daemon and unit,
# and the stand-in backend as convex-backend.service. Built by `make images`
# from a context that deploy/images/node.sh assembles (no registry).
FROM ccm-base:bookworm
COPY bin/ /usr/local/bin/
COPY units/ /etc/systemd/system/
COPY nats.conf /etc/nats/nats.conf
RUN useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ccm \
 && mkdir -p /etc/convex/nats /var/lib/convex/data /var/lib/convex/replica /var/lib/nats \
 && systemctl enable nats-server.service
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/sbin/init"]
