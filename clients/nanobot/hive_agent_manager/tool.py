"""The `agent_manager` nanobot tool: declare, list, inspect, start, stop, restart, remove
and read the logs of sub-agents, all through Hive. Nothing here imports docker or starts
a process; Hive alone holds the Docker socket.
"""

from __future__ import annotations

import os
from typing import Any

from nanobot.agent.tools.base import Tool, ToolResult

from .client import HiveClient, HiveError

#: The image sub-agents run unless the model names another.
DEFAULT_IMAGE = os.environ.get("HIVE_AGENT_IMAGE", "nanobot:latest")
#: How Sol's sub-agents have always been started.
DEFAULT_COMMAND = ["nanobot", "gateway", "--port", "18793"]

ACTIONS = ["create", "start", "stop", "restart", "touch", "remove", "list", "status", "info", "logs",
           "exec", "read_file", "write_file"]
#: The most of a file read_file hands the model.
MAX_FILE_TEXT = 64 * 1024


class AgentManagerTool(Tool):
    """Manage sub-agents by declaring them to Hive."""

    def __init__(self, client: HiveClient | None = None):
        self._client = client

    @property
    def client(self) -> HiveClient:
        # Built on first use, so the environment is read when the tool runs.
        if self._client is None:
            self._client = HiveClient()
        return self._client

    @property
    def name(self) -> str:
        return "agent_manager"

    @property
    def description(self) -> str:
        return (
            "Create and manage sub-agents (each runs in its own container, managed by Hive). "
            "Actions: create (declare an agent; repeating it is harmless), list, status/info, "
            "start, stop, restart, touch (say it is active, so it is not stopped for idleness; "
            "a stopped idle one resumes), remove, logs, exec (run `command` once in a running "
            "agent; answers its exit code and output), read_file and write_file (`path`, "
            "`content`). Provider keys go in secrets (secret names), never in env."
        )

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "action": {"type": "string", "enum": ACTIONS, "description": "What to do."},
                "name": {
                    "type": "string",
                    "description": "The agent's name: lower-case letters, digits and '-', at most 63.",
                },
                "image": {"type": "string", "description": f"Container image (default {DEFAULT_IMAGE})."},
                "command": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "For create: the program the sub-agent runs and its arguments (default: "
                                   "nanobot's gateway). For exec: the command to run, e.g. [\"sh\", \"-c\", \"ls /\"].",
                },
                "model": {"type": "string", "description": "The model the sub-agent uses, e.g. gpt-4o."},
                "role": {"type": "string", "description": "What the sub-agent is for, in a sentence."},
                "env": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Extra environment variables (no secrets here).",
                },
                "secrets": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Names of Hive secrets whose keys become environment variables.",
                },
                "tail": {"type": "integer", "minimum": 1, "description": "For logs: how many lines."},
                "stdin": {"type": "string", "description": "For exec: text for the command's input."},
                "timeout": {"type": "string", "description": "For exec: how long to wait, e.g. 30s (at most 10m)."},
                "path": {"type": "string", "description": "For read_file and write_file: an absolute path in the agent."},
                "content": {"type": "string", "description": "For write_file: the file's text."},
            },
            "required": ["action"],
        }

    async def execute(self, action: str, name: str | None = None, **kwargs: Any) -> Any:
        try:
            if action == "list":
                return _listing(await self.client.list())
            if not name:
                return ToolResult.error(f"action {action!r} needs the agent's name")
            if action == "create":
                agent = await self.client.apply(self.declare(name, **kwargs))
                generation = _part(agent, "metadata").get("generation")
                return f"agent {name} declared (generation {generation}); {_status(agent)}"
            if action in ("status", "info"):
                return _describe(await self.client.get(name))
            if action in ("start", "stop", "restart", "touch"):
                await self.client.action(name, action)
                return f"{action} of agent {name} requested; check with action=status"
            if action == "remove":
                await self.client.delete(name)
                return f"agent {name} is being removed"
            if action == "logs":
                text = await self.client.logs(name, tail=int(kwargs.get("tail") or 100))
                return text or f"agent {name} has printed nothing yet"
            if action == "exec":
                command = kwargs.get("command")
                if not command:
                    return ToolResult.error("action 'exec' needs command, a list of words such as [\"ls\", \"/\"]")
                r = await self.client.exec(name, list(command), kwargs.get("stdin"), kwargs.get("timeout"))
                return _exec_result(r)
            if action in ("read_file", "write_file") and not kwargs.get("path"):
                return ToolResult.error(f"action {action!r} needs path, an absolute path in the agent")
            if action == "read_file":
                data = await self.client.read_file(name, kwargs["path"])
                text = data[:MAX_FILE_TEXT].decode("utf-8", errors="replace")
                return text + (f"\n[cut at {MAX_FILE_TEXT} bytes]" if len(data) > MAX_FILE_TEXT else "")
            if action == "write_file":
                content = str(kwargs.get("content") or "").encode()
                await self.client.write_file(name, kwargs["path"], content)
                return f"wrote {len(content)} bytes to {kwargs['path']} in agent {name}"
            return ToolResult.error(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        except HiveError as e:
            return ToolResult.error(str(e))

    @staticmethod
    def declare(
        name: str,
        image: str | None = None,
        model: str | None = None,
        role: str | None = None,
        env: dict[str, str] | None = None,
        secrets: list[str] | None = None,
        command: list[str] | None = None,
        **_ignored: Any,
    ) -> dict[str, Any]:
        """The Agent document for a sub-agent: nanobot's gateway, its workspace on a named
        volume, its keys from secrets."""
        environment = dict(env or {})
        if model:
            environment["NANOBOT_AGENTS__DEFAULTS__MODEL"] = model
        if role:
            environment["HIVE_AGENT_ROLE"] = role
        spec: dict[str, Any] = {
            "image": image or DEFAULT_IMAGE,
            "command": command or DEFAULT_COMMAND,
            "restartPolicy": "Always",
            "volumes": [{"name": "workspace", "mountPath": "/root/.nanobot"}],
        }
        if environment:
            spec["env"] = environment
        if secrets:
            spec["envFrom"] = [{"secretRef": s} for s in secrets]
        return {
            "apiVersion": "hive/v1",
            "kind": "Agent",
            "metadata": {"name": name, "labels": {"created-by": "agent-manager"}},
            "spec": spec,
        }


def _part(agent: Any, key: str) -> dict[str, Any]:
    """One part of an agent's document, or an empty one: an answer missing a part (or not
    shaped as expected) must not crash the tool."""
    part = agent.get(key) if isinstance(agent, dict) else None
    return part if isinstance(part, dict) else {}


def _status(agent: dict[str, Any]) -> str:
    s = _part(agent, "status")
    text = f"phase {s.get('phase', 'Pending')}"
    if s.get("message"):
        text += f" ({s['message']})"
    return text


def _describe(agent: dict[str, Any]) -> str:
    m, spec, s = _part(agent, "metadata"), _part(agent, "spec"), _part(agent, "status")
    lines = [
        f"agent {m.get('name', '?')}: {_status(agent)}",
        f"image {spec.get('image')}, declared {spec.get('state', 'Running')}, restarts {s.get('restartCount', 0)}",
        f"generation {m.get('generation')} (observed {s.get('observedGeneration', 0)})",
    ]
    if s.get("expiresAt"):
        lines.append(f"expires at {s['expiresAt']}")
    if s.get("stopsAt"):
        lines.append(f"stops at {s['stopsAt']} unless it is active or touched")
    if s.get("idleSince"):
        lines.append(f"idle since {s['idleSince']}; start or touch it to resume")
    return "\n".join(lines)


def _listing(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no agents"
    return "\n".join(
        f"{_part(a, 'metadata').get('name', '?')}: {_part(a, 'status').get('phase', 'Pending')} "
        f"({_part(a, 'spec').get('image')})"
        for a in items
    )


def _exec_result(r: dict[str, Any]) -> str:
    """An exec's answer for the model: the exit code, then each stream that said something."""
    code = r.get("exitCode")
    lines = [f"exit code {code}" if code is not None else "no exit code: the time-out came first"]
    if r.get("timedOut"):
        lines.append("(the command may still be running)")
    for stream in ("stdout", "stderr"):
        if r.get(stream):
            lines.append(f"{stream}:\n{r[stream].rstrip()}")
    if r.get("truncated"):
        lines.append("(output cut at 1 MiB per stream)")
    return "\n".join(lines)
