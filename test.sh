#!/usr/bin/env bash
# Every test tier, on a fresh Debian machine, with what the tiers need installed first:
#   1. Debian's packages: busybox-static (the agents' test image is made from it),
#      docker-compose (Compose v1), mmdebstrap (the base images), python3-venv,
#      chromium and chromium-driver (the dashboard's browser tests), and docker.io when no
#      engine is installed; and Compose v2, the docker CLI's plugin, from
#      Debian 13's package (deployment/install-compose-v2.sh) unless `docker compose` answers;
#   2. a Docker engine that answers (dockerd is started if `docker info` fails);
#   3. the deployment's base images, made from Debian's archive by
#      deployment/local-images.sh --bases (kept: a second run finds them);
#   4. a Python environment in .venv with nanobot-ai and Sol's tool (clients/nanobot), and
#      kubernetes-validate (the Kubernetes schema check of deployment/kubernetes);
# then the Rust unit and integration tests against the real engine (cargo test), a check
# that the client builds alone (without the `server` feature), and the
# Python tests: Sol's tool against a real `hive serve`, both images built from their
# Dockerfiles, the compose deployment run for real (agent-api and Sol in containers), and
# the Kubernetes manifests and the objects Hive renders checked against the API's schema.
#
#   ./test.sh                 # everything
#   ./test.sh -k compose      # extra arguments go to pytest
# Installing needs root (or sudo). DOCKER_HOST is honoured throughout.
set -euo pipefail
cd "$(dirname "$0")"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "test.sh: needs root for: $*" >&2; return 1
  fi
}

missing=()
if command -v dpkg >/dev/null 2>&1; then
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  # The dashboard is tested in a real headless browser.
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium chromium-driver)
fi
if ! docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null 2>&1; then
  missing+=(docker.io)
fi
# Compose v1 (Debian's docker-compose); v2 comes below. The deployment is tested with each.
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "test.sh: starting dockerd (log: /tmp/hive-test-dockerd.log)"
  as_root sh -c 'dockerd >/tmp/hive-test-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    echo "test.sh: dockerd did not come up:" >&2
    tail -n 50 /tmp/hive-test-dockerd.log >&2 || true
    exit 1
  fi
fi
docker version --format 'test.sh: docker engine {{.Server.Version}} (API {{.Server.APIVersion}})'

as_root deployment/install-compose-v2.sh \
  || echo "test.sh: compose v2 not installed; the deployment is tested with v1 only"

# Without the base images the image and deployment tests skip, saying why.
as_root deployment/local-images.sh --bases \
  || echo "test.sh: base images not made; the image and deployment tests will skip"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e "clients/nanobot[test]" \
  "kubernetes-validate==1.37.0" "pyyaml>=6"

cargo test --locked
# The client alone (no `server` feature): it must build without the controller, the
# store or any engine crate.
cargo check --locked --no-default-features --bin hive
.venv/bin/python -m pytest clients/nanobot deployment/kubernetes -q -rs "$@"
