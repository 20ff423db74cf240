"""The agent_manager tool against a real Hive and the real Docker engine."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from conftest import wait_until
from hive_agent_manager.client import HiveClient
from hive_agent_manager.tool import AgentManagerTool
from nanobot.agent.tools.base import ToolResult

SLEEPER = ["/bin/sh", "-c", "echo sub-agent up; exec sleep 3600"]


def run(coro):
    return asyncio.run(coro)


def test_the_tool_declares_and_manages_a_sub_agent(hive, test_image):
    url, key = hive
    tool = AgentManagerTool(HiveClient(url, key))
    out = run(tool.execute(action="create", name="sub1", image=test_image, model="gpt-4o",
                           command=SLEEPER, env={"TEAM": "research"}))
    assert not getattr(out, "is_error", False), out
    assert out.startswith("agent sub1 declared (generation 1)")

    status = wait_until("sub1 to run", lambda: (s := run(tool.execute(action="status", name="sub1")))
                        and "phase Running" in s and "observed 1" in s and s)
    assert f"image {test_image}" in status

    # Declaring again is harmless: nothing changes.
    again = run(tool.execute(action="create", name="sub1", image=test_image, model="gpt-4o",
                             command=SLEEPER, env={"TEAM": "research"}))
    assert "generation 1" in again

    agent = run(HiveClient(url, key).get("sub1"))
    assert agent["spec"]["env"]["NANOBOT_AGENTS__DEFAULTS__MODEL"] == "gpt-4o"
    assert agent["spec"]["volumes"] == [{"name": "workspace", "mountPath": "/root/.nanobot"}]

    listing = run(tool.execute(action="list"))
    assert re.search(r"^sub1: Running", listing, re.M), listing
    logs = wait_until("output", lambda: (t := run(tool.execute(action="logs", name="sub1", tail=5)))
                      and "sub-agent up" in t and t)
    assert logs.strip() == "sub-agent up"

    assert "stop of agent sub1 requested" in run(tool.execute(action="stop", name="sub1"))
    wait_until("sub1 to stop", lambda: "phase Stopped" in run(tool.execute(action="status", name="sub1")))
    run(tool.execute(action="start", name="sub1"))
    wait_until("sub1 to run again", lambda: "phase Running" in run(tool.execute(action="status", name="sub1")))
    # A heartbeat: accepted (with no idle timeout set, it has nothing to restart).
    assert "touch of agent sub1 requested" in run(tool.execute(action="touch", name="sub1"))
    assert "touch" in run(tool.execute(action="bogus", name="sub1")), "the model is told the actions"

    # Inside it, through Hive: a command, and a file both ways.
    out = run(tool.execute(action="exec", name="sub1", command=["sh", "-c", "echo in-sub1; exit 2"]))
    assert out == "exit code 2\nstdout:\nin-sub1", out
    assert "needs command" in str(run(tool.execute(action="exec", name="sub1")))
    wrote = run(tool.execute(action="write_file", name="sub1", path="/root/.nanobot/note.txt", content="noted"))
    assert wrote == "wrote 5 bytes to /root/.nanobot/note.txt in agent sub1", wrote
    assert run(tool.execute(action="read_file", name="sub1", path="/root/.nanobot/note.txt")) == "noted"
    missing = run(tool.execute(action="read_file", name="sub1", path="/root/.nanobot/absent"))
    assert getattr(missing, "is_error", False) and "404" in str(missing), missing

    assert "being removed" in run(tool.execute(action="remove", name="sub1"))
    wait_until("sub1 to be gone", lambda: run(tool.execute(action="list")) == "no agents")


def test_errors_reach_the_model_as_sentences(hive, test_image):
    url, key = hive
    tool = AgentManagerTool(HiveClient(url, key))
    bad = run(tool.execute(action="create", name="Bad_Name", image=test_image))
    assert isinstance(bad, ToolResult) and bad.is_error
    assert "metadata.name" in bad and "Traceback" not in bad
    missing = run(tool.execute(action="status", name="nobody"))
    assert missing.is_error and "not found" in missing
    refused = run(AgentManagerTool(HiveClient(url, "wrong-key")).execute(action="list"))
    assert refused.is_error and "API key" in refused
    away = run(AgentManagerTool(HiveClient("http://127.0.0.1:1", key)).execute(action="list"))
    assert away.is_error and "cannot reach Hive" in away
    assert run(tool.execute(action="stop")).is_error  # no name


def test_names_are_checked_and_quoted_so_no_other_route_is_reached(hive):
    url, key = hive
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.put(f"{url}/v1/secrets/llm-sol", json={"K": "v"}, headers=headers)
    assert r.status_code == 201, r.text
    tool = AgentManagerTool(HiveClient(url, key))
    for name in ["../secrets/llm-sol", "a/b", "x?y", "%2e%2e", "A"]:
        for action in ["remove", "status", "stop", "logs"]:
            out = run(tool.execute(action=action, name=name))
            assert getattr(out, "is_error", False), (action, name, out)
            assert "metadata.name" in out
    assert httpx.get(f"{url}/v1/secrets/llm-sol", headers=headers).status_code == 200, "untouched"


def test_odd_answers_do_not_crash_the_tool():
    from hive_agent_manager.tool import _describe, _listing, _status

    assert _status({}) == "phase Pending"
    assert "agent ?" in _describe({"metadata": None, "status": "x"})
    assert _listing([{"spec": {"image": "i"}}]) == "?: Pending (i)"


def test_nanobot_discovers_and_runs_the_tool_as_its_agent_loop_does(hive, monkeypatch, tmp_path):
    url, key = hive
    # Sol's compose service names the variables this way.
    monkeypatch.delenv("AGENT_API_URL", raising=False)
    monkeypatch.delenv("AGENT_API_KEY", raising=False)
    monkeypatch.setenv("NANOBOT_AGENT_API_URL", url)
    monkeypatch.setenv("NANOBOT_AGENT_API_KEY", key)

    from nanobot.agent.tools.context import ToolContext
    from nanobot.agent.tools.loader import ToolLoader
    from nanobot.agent.tools.registry import ToolRegistry
    from nanobot.config.schema import ToolsConfig

    registry = ToolRegistry()
    registered = ToolLoader().load(ToolContext(config=ToolsConfig(), workspace=str(tmp_path)), registry)
    assert "agent_manager" in registered
    schema = [d for d in registry.get_definitions() if "agent_manager" in str(d)]
    assert schema, "the tool's schema is offered to the model"

    result = run(registry.execute("agent_manager", {"action": "list"}))
    assert result == "no agents", result
    result = run(registry.execute("agent_manager", {"action": "create", "name": "Nope!"}))
    assert getattr(result, "is_error", False) and "metadata.name" in result


def test_the_package_never_touches_docker():
    package = Path(__file__).resolve().parents[1] / "hive_agent_manager"
    for source in package.glob("*.py"):
        text = source.read_text()
        assert not re.search(r"^\s*(import|from)\s+(docker|subprocess)\b", text, re.M), source
        assert "docker.sock" not in text, source
