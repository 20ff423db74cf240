"""The compose deployment, rendered by docker compose itself, and the image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def test_only_agent_api_holds_the_docker_socket():
    env = {**os.environ, "AGENT_API_KEY": "test-key"}
    out = subprocess.run(
        [*compose_command(), "-f", str(REPO / "deployment" / "docker-compose.yml"), "config"],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    assert set(services) == {"agent-api", "sol"}

    def mounts_socket(service: dict) -> bool:
        for v in service.get("volumes", []):
            source = v.get("source", "") if isinstance(v, dict) else str(v).split(":")[0]
            if "docker.sock" in source:
                return True
        return False

    assert mounts_socket(services["agent-api"])
    assert [n for n, s in services.items() if mounts_socket(s)] == ["agent-api"]
    assert "ports" not in services["agent-api"], "the API is not published on the host"
    assert config["networks"]["hive-net"]["name"] == "hive-net"
    for name, service in services.items():
        assert "hive-net" in service["networks"], name
    assert services["sol"]["environment"]["AGENT_API_URL"] == "http://agent-api:8000"
    assert services["sol"]["environment"]["NANOBOT_AGENT_API_KEY"] == "test-key"
    assert "/manifests" in " ".join(services["agent-api"]["command"])


def test_the_image_builds_where_its_base_images_can_be_had():
    have = [
        subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
        for image in ("rust:1-bookworm", "debian:bookworm-slim")
    ]
    if not all(have):
        pytest.skip("the base images rust:1-bookworm and debian:bookworm-slim are not on this engine "
                    "and no registry can be reached, so the Dockerfile is not built here")
    out = subprocess.run(["docker", "build", "-t", "hive:test", str(REPO)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
