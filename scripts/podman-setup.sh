#!/usr/bin/env bash
# Makes this machine able to build and run deploy/docker/Dockerfile with podman, for CI
# and for a developer without a Docker engine (as root, on Debian):
#   - podman with runc (crun refuses hosts whose cgroups are in hybrid v1/v2 mode),
#     netavark and aardvark-dns (container networks with name resolution, for compose);
#   - /etc/containers/containers.conf: cgroupfs and a file event log (no systemd here),
#     and default ulimits no higher than this host's hard limits (a container cannot
#     raise them here);
#   - the Dockerfile's base image, when it is not in local storage and no registry can
#     be reached: a stand-in built from Debian's own packages with debootstrap (the
#     official debian:*-slim images are debootstrap minbase trees too), imported under
#     the same name, so that the Dockerfile builds with its defaults.
#
#   bash scripts/podman-setup.sh        # idempotent; ~2 min the first time
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-docker.io/library/debian:bookworm-slim}
SUITE=${BASE_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "$(id -u)" != 0 ]; then
  echo "scripts/podman-setup.sh installs packages and writes /etc/containers: run it as root" >&2
  exit 1
fi

missing=()
for tool in podman runc debootstrap netavark aardvark-dns; do
  if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/lib/podman/$tool" ]; then
    missing+=("$tool")
  fi
done
if ((${#missing[@]})); then
  echo "podman-setup: apt-get install podman runc debootstrap netavark aardvark-dns"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    podman runc debootstrap netavark aardvark-dns uidmap iptables ca-certificates >/dev/null
fi

mkdir -p /etc/containers
if ! grep -qs 'token-broker: podman-setup' /etc/containers/containers.conf; then
  cat >/etc/containers/containers.conf <<CONF
# token-broker: podman-setup.sh
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
CONF
fi

if podman image exists "$BASE_IMAGE"; then
  echo "podman-setup: $BASE_IMAGE is in local storage"
  exit 0
fi
echo "podman-setup: building a stand-in for $BASE_IMAGE with debootstrap ($SUITE, minbase)"
root=$(mktemp -d /var/tmp/token-broker-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
  || { cat "$root.log"; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Security updates too, as the official image has them; no package lists in the image.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
# Like the official -slim images: no manuals, docs or translations, now or from later
# installs (the copyright files stay).
cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'DPKG'
path-exclude /usr/share/man/*
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
DPKG
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/log/*.log
tar -C "$root" -c . | podman import --quiet - "$BASE_IMAGE" >/dev/null
echo "podman-setup: $BASE_IMAGE imported ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes)"
