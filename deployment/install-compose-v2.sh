#!/usr/bin/env bash
# Installs the docker CLI's compose plugin (Compose v2) on a Debian 12 machine that can
# reach Debian's archive but no other download site: Debian 12 packages only Compose v1
# (docker-compose 1.29), while Debian 13's docker-compose package is v2, a Go program that
# needs nothing but libc. This takes the plugin out of that package, checked the way apt
# checks it (the signed InRelease against Debian's archive keyring, then the Packages index's
# and the package's SHA-256), and puts it where the docker CLI looks for plugins:
#   /usr/local/lib/docker/cli-plugins/docker-compose
# Nothing is done if `docker compose version` already answers. Needs root.
set -euo pipefail

if docker compose version >/dev/null 2>&1; then
  exit 0
fi
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=trixie
arch="$(dpkg --print-architecture)"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "install-compose-v2: fetching docker-compose from Debian $suite ($arch)"
curl -fsS --retry 3 -o "$tmp/InRelease" "$mirror/dists/$suite/InRelease"
gpgv --quiet --keyring "$keyring" --output "$tmp/Release" "$tmp/InRelease" 2>/dev/null \
  || { echo "install-compose-v2: $suite's InRelease is not signed by a key in $keyring" >&2; exit 1; }

index="main/binary-$arch/Packages.xz"
want="$(awk -v f="$index" '/^SHA256:/{s=1; next} /^[^ ]/{s=0} s && $3 == f {print $1}' "$tmp/Release")"
[ -n "$want" ] || { echo "install-compose-v2: $index is not in $suite's Release" >&2; exit 1; }
curl -fsS --retry 3 -o "$tmp/Packages.xz" "$mirror/dists/$suite/$index"
echo "$want  $tmp/Packages.xz" | sha256sum --quiet -c -

read -r file sum < <(xz -dc "$tmp/Packages.xz" | awk '
  /^Package: /{p = ($2 == "docker-compose")}
  p && /^Filename: /{f = $2}
  p && /^SHA256: /{s = $2}
  p && /^$/{if (f != "") {print f, s; exit}}')
[ -n "${file:-}" ] || { echo "install-compose-v2: no docker-compose in $suite" >&2; exit 1; }
curl -fsS --retry 3 -o "$tmp/compose.deb" "$mirror/$file"
echo "$sum  $tmp/compose.deb" | sha256sum --quiet -c -

dpkg-deb -x "$tmp/compose.deb" "$tmp/root"
install -D -m 0755 "$tmp/root/usr/libexec/docker/cli-plugins/docker-compose" \
  /usr/local/lib/docker/cli-plugins/docker-compose
docker compose version
