#!/usr/bin/env bash
# Makes the compose deployment's keys, once, one per role, so that Sol holds no more
# power than it needs:
#   secrets/agent-api/admin.key  the admin key, for people (agent-api reads it from this
#                                file; Sol never sees it):
#                                `hive --key-file deployment/secrets/agent-api/admin.key ...`
#   secrets/agent-api/keys.yaml  the keys file agent-api loads (--keys-file): Sol's key, as
#                                a SHA-256; add people's keys here (`hive keys new`)
#   secrets/sol.key              Sol's only key: an operator of owner `sol`
#   secrets/sol.env              Sol's environment (AGENT_API_KEY, NANOBOT_AGENT_API_KEY):
#                                compose's env_file for the sol service
# secrets/agent-api/ is mounted into agent-api only; sol.env reaches Sol only.
# Keys are 32 random bytes from the kernel, hex; no value passes through a command line or
# a log (each is written by the shell's own printf or redirection, never an argument of a
# program). A key that exists is kept: run it again after adding entries by hand to
# keys.yaml and nothing is lost. Files are private to you, except secrets/agent-api/, which
# agent-api (uid 10001 in the socket's group) must read: it is given to the Docker socket's
# group (whose members are root on this host already), mode 0750 and 0640.
#
#   deployment/setup.sh                  # then: docker compose --env-file deployment/.env ... up -d
#
# HIVE_SECRETS (default deployment/secrets) puts the files elsewhere; DOCKER_GID (default:
# the group of DOCKER_SOCKET, /var/run/docker.sock) is the group agent-api runs in.
set -euo pipefail
cd "$(dirname "$0")"

dir="${HIVE_SECRETS:-secrets}"
socket="${DOCKER_SOCKET:-/var/run/docker.sock}"
gid="${DOCKER_GID:-$(stat -c %g "$socket")}"
umask 077
api="$dir/agent-api"
mkdir -p "$api"

# A fresh key into $1, unless one is there.
new_key() {
  if [ ! -s "$1" ]; then
    head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n' > "$1.tmp"
    mv "$1.tmp" "$1"
    echo "setup: made $1"
  fi
}
new_key "$api/admin.key"
new_key "$dir/sol.key"

sol="$(< "$dir/sol.key")"
sha="$(printf '%s' "$sol" | sha256sum | cut -d' ' -f1)"
if [ ! -s "$api/keys.yaml" ]; then
  printf 'keys:\n  - id: sol\n    owner: sol\n    role: operator\n    sha256: %s\n' "$sha" > "$api/keys.yaml.tmp"
  mv "$api/keys.yaml.tmp" "$api/keys.yaml"
  echo "setup: made $api/keys.yaml (Sol's key: an operator of owner sol)"
elif ! grep -q "sha256: $sha" "$api/keys.yaml"; then
  echo "setup: $api/keys.yaml does not hold Sol's key; add its entry (sha256: $sha) or remove the file" >&2
  exit 1
fi
printf 'AGENT_API_KEY=%s\nNANOBOT_AGENT_API_KEY=%s\n' "$sol" "$sol" > "$dir/sol.env"

# agent-api runs as uid 10001 in the socket's group: it reads its directory through it.
if ! chgrp -R "$gid" "$api" 2>/dev/null; then
  echo "setup: cannot give $api to group $gid (the Docker socket's);" \
       "run this as root or as a member of that group" >&2
  exit 1
fi
chmod 0750 "$api"
chmod 0640 "$api/admin.key" "$api/keys.yaml"
echo "setup: keys ready in $dir (agent-api/admin.key is yours; sol.key and sol.env are Sol's)"
