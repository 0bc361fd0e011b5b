#!/usr/bin/env bash
# Builds the Debian base image ccm-base:bookworm without any registry:
# debootstrap into a folder, then `docker import`. Skipped when the image
# exists (bump the tag's revision when the package list changes). Needs root,
# debootstrap and a reachable Debian mirror.
set -euo pipefail
IMAGE=${IMAGE:-ccm-base:bookworm-3}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE exists"
  exit 0
fi
command -v debootstrap >/dev/null || apt-get install -y debootstrap
root=$(mktemp -d /var/tmp/ccm-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,iproute2,iputils-arping,iputils-ping,procps,ca-certificates,sqlite3,curl \
  bookworm "$root" "$MIRROR"
# polkitd (ccm-backend's permission to control the backend's unit) fails to
# configure inside debootstrap's first stage; apt in the finished root
# installs it (its postinst only warns that no system bus runs).
chroot "$root" apt-get install -y -q --no-install-recommends polkitd
# HAProxy: the client container's load balancer in the cluster test
# without a VIP (disabled on every node unless a test configures it).
chroot "$root" apt-get install -y -q --no-install-recommends haproxy
chroot "$root" apt-get clean
# A container has no consoles to log in on, and must not try to fix its clock.
rm -f "$root"/etc/systemd/system/getty.target.wants/* \
      "$root"/lib/systemd/system/multi-user.target.wants/getty.target
ln -sf /dev/null "$root"/etc/systemd/system/systemd-timesyncd.service
echo "ccm-node" > "$root"/etc/hostname
tar -C "$root" -c . | docker import \
  --change 'ENTRYPOINT ["/sbin/init"]' - "$IMAGE"
echo "built $IMAGE"
