"""Hive's MCP endpoint against a real `hive serve` and the real engine: through the official
`mcp` package's streamable HTTP client, and through nanobot-ai's own MCP support (no plugin)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

TOOLS = {"apply_agents", "get_agent", "list_agents", "agent_events", "delete_agent", "start_agent",
         "stop_agent", "restart_agent", "touch_agent", "agent_logs", "wait_agent", "exec_agent",
         "read_agent_file", "write_agent_file"}


def manifest(name: str, image: str, script: str) -> str:
    return (f"apiVersion: hive/v1\nkind: Agent\nmetadata: {{name: {name}, labels: {{via: mcp}}}}\n"
            f"spec:\n  image: {image}\n  command: [sh, -c, {json.dumps(script)}]\n")


@contextlib.asynccontextmanager
async def mcp_session(url: str, key: str):
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        async with streamable_http_client(f"{url}/mcp", http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


async def call(session: ClientSession, tool: str, **arguments):
    """(is_error, text, JSON of the text or None)."""
    result = await session.call_tool(tool, arguments)
    text = "".join(c.text for c in result.content if c.type == "text")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return bool(result.isError), text, parsed


def test_a_missing_or_wrong_key_is_401_before_any_mcp_exchange(hive_keys):
    url, _ = hive_keys
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    for extra in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
        r = httpx.post(f"{url}/mcp", json=hello, headers={**headers, **extra})
        assert r.status_code == 401, (extra, r.text)
        assert r.json()["error"]["code"] == "unauthorized"


def test_the_official_mcp_client_runs_an_agent_through_hive(hive_keys, test_image):
    url, keys = hive_keys
    name = "mcp-talker"

    async def scenario():
        async with mcp_session(url, keys["sol"]) as sol:
            listed = await sol.list_tools()
            assert {t.name for t in listed.tools} == TOOLS
            err, text, answer = await call(sol, "apply_agents",
                                           manifest=manifest(name, test_image, "echo hello-from-mcp; exec sleep 3600"))
            assert not err, text
            assert answer["items"][0] == {**answer["items"][0], "name": name, "result": "created"}

            err, text, agent = await call(sol, "wait_agent", name=name, **{"for": "phase=Running"}, timeout="60s")
            assert not err, text
            assert agent["status"]["phase"] == "Running"
            deadline = time.monotonic() + 30
            while True:
                err, logs, _ = await call(sol, "agent_logs", name=name, tail=10)
                if "hello-from-mcp" in logs or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert not err and "hello-from-mcp" in logs, logs
            err, text, events = await call(sol, "agent_events", name=name)
            assert not err and {"Created", "Started"} <= {e["reason"] for e in events["items"]}, text
            err, text, listing = await call(sol, "list_agents", selector="via=mcp")
            assert [a["metadata"]["name"] for a in listing["items"]] == [name]

            # Another owner can neither see nor touch it; a viewer of the owner may only read.
            async with mcp_session(url, keys["bob"]) as bob:
                err, text, body = await call(bob, "get_agent", name=name)
                assert err and body["error"]["code"] == "not_found", text
                err, text, body = await call(bob, "delete_agent", name=name)
                assert err and body["error"]["code"] == "not_found", text
                err, text, body = await call(bob, "list_agents")
                assert not err and body["items"] == []
            async with mcp_session(url, keys["sol-viewer"]) as viewer:
                err, text, body = await call(viewer, "get_agent", name=name)
                assert not err and body["metadata"]["name"] == name
                err, text, body = await call(viewer, "stop_agent", name=name)
                assert err and body["error"]["code"] == "forbidden", text

            err, text, _ = await call(sol, "stop_agent", name=name)
            assert not err, text
            err, text, agent = await call(sol, "wait_agent", name=name, **{"for": "phase=Stopped"}, timeout="60s")
            assert not err and agent["status"]["phase"] == "Stopped", text
            err, text, _ = await call(sol, "delete_agent", name=name)
            assert not err, text
            deadline = time.monotonic() + 60
            while True:
                err, text, body = await call(sol, "get_agent", name=name)
                if err:
                    break
                assert time.monotonic() < deadline, f"{name} was not removed: {text}"
                await asyncio.sleep(0.2)
            assert body["error"]["code"] == "not_found", text

    asyncio.run(scenario())

    # Every mutation is in the audit under the key that made it, refusals included.
    audit = httpx.get(f"{url}/v1/audit", headers={"Authorization": f"Bearer {keys['admin']}"}).json()
    seen = {(e["keyId"], e["verb"], e["agent"], e["outcome"]) for e in audit["items"]}
    for entry in [("sol-1", "apply", name, "accepted"), ("sol-1", "stop", name, "accepted"),
                  ("sol-1", "delete", name, "accepted"), ("sol-view", "stop", name, "refused"),
                  ("bob-1", "delete", name, "refused")]:
        assert entry in seen, (entry, sorted(seen))


def test_nanobot_uses_hive_over_mcp_with_no_plugin(hive_keys, test_image):
    """nanobot-ai's own MCP client (tools.mcpServers), its own ToolRegistry, no model."""
    from nanobot.agent.tools.mcp import _close_mcp_connections, connect_mcp_servers
    from nanobot.agent.tools.registry import ToolRegistry, is_tool_error_result
    from nanobot.config.schema import Config
    from nanobot.security.network import configure_ssrf_whitelist

    url, keys = hive_keys
    name = "nanobot-mcp"
    config = Config.model_validate({"tools": {
        # nanobot refuses private addresses unless allowed: Hive is on loopback here.
        "ssrfWhitelist": ["127.0.0.0/8"],
        "mcpServers": {"hive": {"type": "streamableHttp", "url": f"{url}/mcp",
                                "headers": {"Authorization": f"Bearer {keys['sol']}"}, "toolTimeout": 90}},
    }})

    async def scenario():
        configure_ssrf_whitelist(config.tools.ssrf_whitelist)
        registry = ToolRegistry()
        connections = await connect_mcp_servers(config.tools.mcp_servers, registry)
        try:
            assert "hive" in connections, "nanobot could not connect to Hive's MCP endpoint"
            assert {f"mcp_hive_{t}" for t in TOOLS} <= set(registry.tool_names)
            answer = await registry.execute("mcp_hive_apply_agents",
                                            {"manifest": manifest(name, test_image, "exec sleep 3600")})
            assert not is_tool_error_result(answer), answer
            answer = await registry.execute("mcp_hive_wait_agent",
                                            {"name": name, "for": "phase=Running", "timeout": "60s"})
            assert not is_tool_error_result(answer), answer
            assert json.loads(answer)["status"]["phase"] == "Running"
            answer = await registry.execute("mcp_hive_get_agent", {"name": "not-there"})
            assert is_tool_error_result(answer) and "not_found" in answer, answer
            answer = await registry.execute("mcp_hive_delete_agent", {"name": name})
            assert not is_tool_error_result(answer), answer
        finally:
            await _close_mcp_connections(connections)
            configure_ssrf_whitelist([])

    asyncio.run(scenario())
