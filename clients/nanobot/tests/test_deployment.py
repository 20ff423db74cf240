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


def present(image):
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def bases(*choices):
    """The first set of base images that is on this engine: the ones
    deployment/local-images.sh makes from Debian's archive, or the public ones."""
    for choice in choices:
        if all(present(image) for image in choice.values()):
            return choice
    pytest.skip(f"none of the base images {list(choices)} is on this engine and no registry can be "
                "reached; deployment/local-images.sh makes them")


def build(tag, dockerfile, args):
    cmd = ["docker", "build", "-q", "-t", tag, "-f", str(REPO / dockerfile)]
    for k, v in args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    out = subprocess.run(cmd + [str(REPO)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_hives_image_builds_and_runs_unprivileged():
    args = bases({"RUST_IMAGE": "hive-local/rust:bookworm", "RUNTIME_IMAGE": "debian:bookworm-slim"},
                 {"RUST_IMAGE": "rust:1-slim-bookworm", "RUNTIME_IMAGE": "debian:bookworm-slim"})
    build("hive:test", "Dockerfile", args)
    version = subprocess.run(["docker", "run", "--rm", "hive:test", "--version"],
                             capture_output=True, text=True)
    assert version.stdout.startswith("hive "), version
    who = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", "hive:test", "-u"],
                         capture_output=True, text=True)
    assert who.stdout.strip() == "10001", who


SOL_CHECK = """
import asyncio, os, shutil
from nanobot.agent.tools.context import ToolContext
from nanobot.agent.tools.loader import ToolLoader
from nanobot.agent.tools.registry import ToolRegistry
from nanobot.config.schema import ToolsConfig
reg = ToolRegistry()
ToolLoader().load(ToolContext(config=ToolsConfig(), workspace="/tmp/ws"), reg)
print("tool:", reg.get("agent_manager") is not None)
print("socket:", os.path.exists("/var/run/docker.sock"))
print("docker:", shutil.which("docker"))
print("skill:", os.path.exists(os.path.expanduser("~/.nanobot/workspace/skills/agent_manager/SKILL.md")))
print("answer:", asyncio.run(reg.execute("agent_manager", {"action": "list"})).splitlines()[0])
"""


def test_sols_image_has_the_tool_and_the_skill_and_no_docker():
    args = bases({"PYTHON_IMAGE": "hive-local/python:bookworm"},
                 {"PYTHON_IMAGE": "python:3.12-slim-bookworm"})
    build("sol:test", "deployment/sol/Dockerfile", args)
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python",
                          "-e", "AGENT_API_URL=http://agent-api:8000", "-e", "AGENT_API_KEY=k",
                          "sol:test", "-c", SOL_CHECK], capture_output=True, text=True)
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert lines.get("tool") == "True", out
    assert lines.get("socket") == "False" and lines.get("docker") == "None", out
    assert lines.get("skill") == "True", out
    assert "cannot reach Hive at http://agent-api:8000" in lines.get("answer", ""), out
