"""An async HTTP client for Hive's agent API.

Reads the server and key from AGENT_API_URL / AGENT_API_KEY, or from
NANOBOT_AGENT_API_URL / NANOBOT_AGENT_API_KEY (the names Sol's compose service uses).
Failures become :class:`HiveError` with a sentence a model can act on.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://agent-api:8000"


class HiveError(Exception):
    """A request Hive refused or could not answer, as one sentence."""


#: What Hive accepts as an agent's name (a DNS-1123 label).
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def segment(name: Any) -> str:
    """An agent's name as one URL path segment: checked first, then quoted, so that a name
    such as ``../secrets/x`` can never reach another route."""
    if not isinstance(name, str) or not NAME.match(name):
        raise HiveError(
            "metadata.name is not a valid agent name: use 1 to 63 lower-case letters, digits "
            "and '-', starting and ending with a letter or digit"
        )
    return quote(name, safe="")


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class HiveClient:
    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 30.0):
        self.url = (url or _env("AGENT_API_URL", "NANOBOT_AGENT_API_URL") or DEFAULT_URL).rstrip("/")
        self.key = key or _env("AGENT_API_KEY", "NANOBOT_AGENT_API_KEY")
        self.timeout = timeout

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if not self.key:
            raise HiveError(
                "no API key for Hive: set AGENT_API_KEY (or NANOBOT_AGENT_API_KEY) in this agent's environment"
            )
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        timeout = kwargs.pop("timeout", self.timeout)
        try:
            async with httpx.AsyncClient(timeout=timeout) as http:
                response = await http.request(method, f"{self.url}{path}", headers=headers, **kwargs)
        except httpx.ConnectError:
            raise HiveError(f"cannot reach Hive at {self.url}: is the agent-api service running?") from None
        except httpx.TimeoutException:
            raise HiveError(f"Hive at {self.url} did not answer in time") from None
        if response.status_code >= 400:
            raise HiveError(_describe(response))
        return response

    async def apply(self, agent: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an agent (idempotent: the same document changes nothing)."""
        name = segment((agent.get("metadata") or {}).get("name"))
        return (await self._request("PUT", f"/v1/agents/{name}", json=agent)).json()

    async def list(self, label: str | None = None) -> list[dict[str, Any]]:
        params = {"label": label} if label else None
        return (await self._request("GET", "/v1/agents", params=params)).json()["items"]

    async def get(self, name: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v1/agents/{segment(name)}")).json()

    async def action(self, name: str, action: str) -> dict[str, Any]:
        path = f"/v1/agents/{segment(name)}/action"
        return (await self._request("POST", path, json={"action": action})).json()

    async def delete(self, name: str) -> dict[str, Any]:
        return (await self._request("DELETE", f"/v1/agents/{segment(name)}")).json()

    async def exec(self, name: str, command: list[str], stdin: str | None = None,
                   timeout: str | None = None) -> dict[str, Any]:
        """Runs a command once in a running agent: {exitCode, stdout, stderr, truncated, timedOut}."""
        body: dict[str, Any] = {"command": command}
        if stdin is not None:
            body["stdin"] = stdin
        if timeout:
            body["timeout"] = timeout
        path = f"/v1/agents/{segment(name)}/exec"
        # The answer may take as long as the command's own time-out (at most 10 minutes).
        return (await self._request("POST", path, json=body, timeout=max(self.timeout, 610.0))).json()

    async def read_file(self, name: str, path: str) -> bytes:
        """A regular file of an agent."""
        response = await self._request("GET", f"/v1/agents/{segment(name)}/files", params={"path": path})
        if response.headers.get("content-type", "").startswith("application/x-tar"):
            raise HiveError(f"{path} is a directory; list it with action=exec (ls)")
        return response.content

    async def write_file(self, name: str, path: str, content: bytes) -> None:
        """Writes a file into an agent (its directory must exist)."""
        await self._request("PUT", f"/v1/agents/{segment(name)}/files", params={"path": path},
                            content=content, headers={"content-type": "application/octet-stream"})

    async def logs(self, name: str, tail: int = 100) -> str:
        path = f"/v1/agents/{segment(name)}/logs"
        return (await self._request("GET", path, params={"tail": tail})).text


def _describe(response: httpx.Response) -> str:
    """Hive's error answer as a sentence: what is wrong, where, and which rule."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    message = error.get("message") or response.text or response.reason_phrase
    if response.status_code == 401:
        return f"Hive refused the API key ({message}); check AGENT_API_KEY"
    parts = [f"Hive refused ({response.status_code}): {message}"]
    if error.get("rule"):
        parts.append(f"(policy rule {error['rule']})")
    for doc in error.get("documents", []):
        parts.append(f"document {doc.get('index')}: {doc.get('message')}")
    return " ".join(parts)
