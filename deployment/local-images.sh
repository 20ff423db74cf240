#!/usr/bin/env bash
# Makes, on a machine that cannot pull from a registry, the base images Hive's and Sol's
# Dockerfiles build on, from Debian's own archive (which apt reaches), and builds Hive's
# image with them. Each image is made once: an existing tag is kept (--rebuild remakes).
#
#   deployment/local-images.sh            # bases, then hive:latest and sol:latest
#   deployment/local-images.sh --bases    # only the bases
#
# What it makes (mmdebstrap, Debian's package, as root):
#   debian:bookworm-slim        a minbase Debian 12, the way Docker's debian images are made
#   hive-local/rust:bookworm    that plus Debian's rustc-web/cargo-web (bookworm-security), gcc
#   hive-local/python:bookworm  that plus Debian's python3 (3.11) and venv
# The host's own extra CA certificates (/usr/local/share/ca-certificates) go into the
# images too, so builds inside them trust what the host trusts (a TLS-inspecting egress).
# The Dockerfiles are unchanged for users with a registry: their base images are build
# arguments whose defaults are the public tags.
set -euo pipefail
cd "$(dirname "$0")/.."

rebuild=false
hive=true
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=true ;;
    --bases) hive=false ;;
    *) echo "usage: $0 [--rebuild] [--bases]" >&2; exit 2 ;;
  esac
done

RUNTIME_IMAGE=debian:bookworm-slim
RUST_IMAGE=hive-local/rust:bookworm
PYTHON_IMAGE=hive-local/python:bookworm

have() { [ "$rebuild" = false ] && docker image inspect "$1" >/dev/null 2>&1; }

need_mmdebstrap() {
  command -v mmdebstrap >/dev/null 2>&1 && return
  echo "local-images: installing mmdebstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
}

# The archive the host uses (deb822 or one-line), else Debian's default mirror.
sources() {
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ] && grep -q bookworm "$f"; then echo "$f"; return; fi
  done
  echo "http://deb.debian.org/debian"
}

# mmdebstrap TAG [--include=...]: a slim Debian 12 tarball straight into `docker import`.
debootstrap_image() {
  local tag="$1"; shift
  local hooks=()
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    hooks+=(--include=ca-certificates
      --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"'
      --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/"'
      --customize-hook='chroot "$1" update-ca-certificates >/dev/null')
  fi
  echo "local-images: making $tag"
  mmdebstrap --quiet --mode=root --variant=minbase \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1/var/lib/apt/lists/"* "$1/var/cache/apt/"*.bin' \
    "${hooks[@]}" "$@" \
    bookworm - "$(sources)" \
  | docker import -c 'CMD ["bash"]' -m "made by deployment/local-images.sh" - "$tag" >/dev/null
}

if ! have "$RUNTIME_IMAGE"; then
  need_mmdebstrap
  debootstrap_image "$RUNTIME_IMAGE"
fi
if ! have "$RUST_IMAGE"; then
  need_mmdebstrap
  # Cargo.lock needs Rust 1.91; bookworm-security's rustc-web is newer (bookworm's rustc is 1.63).
  debootstrap_image "$RUST_IMAGE" --include=ca-certificates,rustc-web,cargo-web,gcc,libc6-dev
fi
if ! have "$PYTHON_IMAGE"; then
  need_mmdebstrap
  debootstrap_image "$PYTHON_IMAGE" --include=ca-certificates,python3,python3-venv
fi

if [ "$hive" = true ] && ! have hive:latest; then
  echo "local-images: building hive:latest"
  docker build -q -t hive:latest \
    --build-arg RUST_IMAGE="$RUST_IMAGE" --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" .
fi
if [ "$hive" = true ] && ! have sol:latest; then
  echo "local-images: building sol:latest"
  docker build -q -t sol:latest -f deployment/sol/Dockerfile \
    --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" .
fi
