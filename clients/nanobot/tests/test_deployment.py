"""The compose deployment, rendered by docker compose itself, and the image."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import wait_until

REPO = Path(__file__).resolve().parents[3]


def composes() -> list[list[str]]:
    """The compose implementations on this machine: Debian's docker-compose (v1) and the
    docker CLI's compose plugin (v2). The deployment must work with both."""
    found = []
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        found.append(["docker", "compose"])
    return found


COMPOSES = composes()
#: Each test that runs compose runs once with each implementation found.
each_compose = pytest.mark.parametrize(
    "compose", COMPOSES or [pytest.param(None, marks=pytest.mark.skip(reason="no compose is installed"))],
    ids=lambda c: "v1" if c == ["docker-compose"] else "v2")


def make_keys(secrets: Path, socket_gid: int | None = None) -> dict[str, str]:
    """deployment/setup.sh, as the README's step, into `secrets`: the key values made."""
    env = {**os.environ, "HIVE_SECRETS": str(secrets)}
    if socket_gid is not None:
        env["DOCKER_GID"] = str(socket_gid)
    out = subprocess.run([str(REPO / "deployment" / "setup.sh")], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    keys = {"admin": (secrets / "agent-api" / "admin.key").read_text().strip(),
            "sol": (secrets / "sol.key").read_text().strip()}
    # No key value is printed.
    assert not any(k in out.stdout + out.stderr for k in keys.values()), out.stdout
    return keys


@each_compose
def test_only_agent_api_holds_the_docker_socket_and_sol_only_its_own_key(compose, tmp_path):
    keys = make_keys(tmp_path / "secrets")
    env = {**os.environ, "HIVE_SECRETS": str(tmp_path / "secrets")}
    env.pop("AGENT_API_KEY", None)
    out = subprocess.run(
        [*compose, "-f", str(REPO / "deployment" / "docker-compose.yml"), "config"],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    assert set(services) == {"agent-api", "sol"}

    def mounts(service: dict) -> list[tuple[str, str]]:
        """(source, target) of each volume, in v2's long form or v1's `src:dst[:mode]`."""
        out = []
        for v in service.get("volumes", []):
            if isinstance(v, dict):
                out.append((v.get("source", ""), v.get("target", "")))
            else:
                source, target, *_ = str(v).split(":") + [""]
                out.append((source, target))
        return out

    def mounts_socket(service: dict) -> bool:
        return any("docker.sock" in source for source, _ in mounts(service))

    assert mounts_socket(services["agent-api"])
    assert [n for n, s in services.items() if mounts_socket(s)] == ["agent-api"]
    assert "ports" not in services["agent-api"], "the API is not published on the host"
    # External: the agents on it outlive the project (compose must not remove it on `down`).
    assert config["networks"]["hive-net"]["name"] == "hive-net"
    assert config["networks"]["hive-net"].get("external") in (True, {"name": "hive-net"}), config["networks"]
    for name, service in services.items():
        assert "hive-net" in service["networks"], name
    assert services["sol"]["environment"]["AGENT_API_URL"] == "http://agent-api:8000"
    # Sol's environment holds Sol's own key, and nothing holds the admin key's value.
    assert services["sol"]["environment"]["NANOBOT_AGENT_API_KEY"] == keys["sol"]
    assert services["sol"]["environment"]["AGENT_API_KEY"] == keys["sol"]
    rendered = json.dumps(services)
    assert keys["admin"] not in rendered
    assert keys["sol"] not in json.dumps(services["agent-api"])
    command = " ".join(services["agent-api"]["command"])
    for flag in ("--manifests-dir=/manifests", "--api-key-file=", "--keys-file=", "--policy="):
        assert flag in command, command
    # A fresh deployment's manifests directory is empty: it runs no agent but Sol.
    (source,) = [Path(src) for src, target in mounts(services["agent-api"]) if target == "/manifests"]
    assert not [p for p in source.rglob("*") if p.suffix in (".yaml", ".yml", ".json")], source


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


@pytest.fixture(scope="session")
def hive_image() -> str:
    """Hive's image, built from the repository's Dockerfile (once per session)."""
    args = bases({"RUST_IMAGE": "hive-local/rust:bookworm", "RUNTIME_IMAGE": "debian:bookworm-slim"},
                 {"RUST_IMAGE": "rust:1-slim-bookworm", "RUNTIME_IMAGE": "debian:bookworm-slim"})
    build("hive:test", "Dockerfile", args)
    return "hive:test"


@pytest.fixture(scope="session")
def sol_image() -> str:
    """Sol's image, built from deployment/sol/Dockerfile (once per session)."""
    args = bases({"PYTHON_IMAGE": "hive-local/python:bookworm"},
                 {"PYTHON_IMAGE": "python:3.12-slim-bookworm"})
    build("sol:test", "deployment/sol/Dockerfile", args)
    return "sol:test"


def test_hives_image_builds_and_runs_unprivileged(hive_image):
    version = subprocess.run(["docker", "run", "--rm", hive_image, "--version"],
                             capture_output=True, text=True)
    assert version.stdout.startswith("hive "), version
    who = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", hive_image, "-u"],
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


def test_sols_image_has_the_tool_and_the_skill_and_no_docker(sol_image):
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python",
                          "-e", "AGENT_API_URL=http://agent-api:8000", "-e", "AGENT_API_KEY=k",
                          sol_image, "-c", SOL_CHECK], capture_output=True, text=True)
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert lines.get("tool") == "True", out
    assert lines.get("socket") == "False" and lines.get("docker") == "None", out
    assert lines.get("skill") == "True", out
    assert "cannot reach Hive at http://agent-api:8000" in lines.get("answer", ""), out


# --- The deployment, running: agent-api and Sol up through compose, Sol declaring a
# sub-agent through its tool, and talking to it by name on the agents' network.

#: Runs inside Sol's container: nanobot's own ToolRegistry loads the tools the gateway
#: loads and executes agent_manager with the JSON parameters in argv[2] (no model needed).
#: `wait-running` repeats `status` until the agent's phase is Running (or the deadline).
SOL_TOOL = r"""
import asyncio, json, sys, time
from nanobot.agent.tools.context import ToolContext
from nanobot.agent.tools.loader import ToolLoader
from nanobot.agent.tools.registry import ToolRegistry
from nanobot.config.schema import ToolsConfig

async def main(step, params):
    reg = ToolRegistry()
    ToolLoader().load(ToolContext(config=ToolsConfig(), workspace="/tmp/ws"), reg)
    if step != "wait-running":
        return await reg.execute("agent_manager", params)
    deadline = time.monotonic() + 90
    while True:
        answer = await reg.execute("agent_manager", {"action": "status", "name": params["name"]})
        if "phase Running" in str(answer).splitlines()[0] or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.5)

print(asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]))))
"""

#: Runs inside Sol's container: GETs argv[1] until it answers (or the deadline).
SOL_FETCH = r"""
import sys, time, urllib.request
deadline = time.monotonic() + 30
while True:
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())
        break
    except Exception as e:
        if time.monotonic() > deadline:
            print("unreachable:", e)
            break
        time.sleep(0.3)
"""

#: Runs inside Sol's container: every way it might reach the Docker engine.
SOL_NO_ENGINE = r"""
import os, socket, struct
print("sockets:", [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)])
print("DOCKER_HOST:", os.environ.get("DOCKER_HOST"))
gateway = None
for line in open("/proc/net/route").read().splitlines()[1:]:
    fields = line.split()
    if fields[1] == "00000000":
        gateway = socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
for port in (2375, 2376):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((gateway, port))
        print(f"tcp {port}: open")
    except OSError as e:
        print(f"tcp {port}: closed ({e.__class__.__name__})")
"""


#: Runs inside Sol's container: one request to agent-api with Sol's key from its
#: environment; prints the status and the body.
SOL_REQUEST = r"""
import os, sys, urllib.request, urllib.error
method, path, body = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request("http://agent-api:8000" + path, method=method,
                             data=body.encode() if body else None,
                             headers={"Authorization": "Bearer " + os.environ["AGENT_API_KEY"],
                                      "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


def docker_json(*args):
    out = subprocess.run(["docker", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


wait_for = functools.partial(wait_until, timeout=90, step=0.3)


class Deployment:
    """deployment/docker-compose.yml brought up as its own compose project, Hive instance
    and agents' network, on the engine DOCKER_HOST names; `teardown` removes all of it."""

    def __init__(self, compose, hive_image, sol_image, tmp_path):
        self.project = f"hivedeploy{uuid.uuid4().hex[:8]}"
        self.network = f"hive-net-{self.project}"
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if not host.startswith("unix://"):
            pytest.skip(f"compose mounts the engine's socket into agent-api; DOCKER_HOST={host} is not one")
        socket_path = host[len("unix://"):]
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        # The README's step: the keys, one per role (the deployment's own manifests
        # directory and policy as shipped).
        secrets = tmp_path / "secrets"
        self.keys = make_keys(secrets, os.stat(socket_path).st_gid)
        self.env = {
            **os.environ,
            "HIVE_IMAGE": hive_image, "SOL_IMAGE": sol_image,
            "HIVE_NETWORK": self.network, "HIVE_INSTANCE": self.project,
            "HIVE_MANIFESTS": str(manifests), "HIVE_SECRETS": str(secrets),
            "DOCKER_SOCKET": socket_path, "DOCKER_GID": str(os.stat(socket_path).st_gid),
        }
        self.env.pop("AGENT_API_KEY", None)
        self.compose_cmd = [*compose, "-p", self.project,
                            "-f", str(REPO / "deployment" / "docker-compose.yml")]

    def compose(self, *args):
        out = subprocess.run([*self.compose_cmd, *args], capture_output=True, text=True, env=self.env)
        assert out.returncode == 0, f"compose {args}: {out.stdout}\n{out.stderr}"
        return out

    def up(self):
        # The README's step: the network outlives the project.
        subprocess.run(["docker", "network", "create", self.network], capture_output=True)
        self.compose("up", "-d", "--no-build")
        for service in ("agent-api", "sol"):
            wait_for(f"{service} to be healthy", lambda: self.health(service) == "healthy", timeout=120)

    def container(self, service):
        ids = self.compose("ps", "-q", service).stdout.split()
        return ids[0] if ids else None

    def health(self, service):
        cid = self.container(service)
        if cid is None:
            return None
        state = docker_json("inspect", cid)[0]["State"]
        assert state["Status"] != "exited", f"{service} exited: {self.logs(service)}"
        return (state.get("Health") or {}).get("Status")

    def logs(self, service):
        out = subprocess.run([*self.compose_cmd, "logs", "--no-color", "--tail", "50", service],
                             capture_output=True, text=True, env=self.env)
        return out.stdout + out.stderr

    def in_sol(self, script, *args):
        out = subprocess.run(["docker", "exec", self.container("sol"), "python", "-c", script, *args],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    def tool(self, params, step="execute"):
        return self.in_sol(SOL_TOOL, step, json.dumps(params))

    def as_sol(self, method, path, body=None):
        """A request to agent-api from inside Sol's container, with Sol's own key (from its
        environment): (status, body)."""
        out = self.in_sol(SOL_REQUEST, method, path, json.dumps(body) if body is not None else "")
        status, _, text = out.partition(" ")
        return int(status), text

    def hive(self, *args, stdin=None):
        """`hive ARGS` inside agent-api: the admin key, from its file."""
        out = subprocess.run([*self.compose_cmd, "exec", "-T", "agent-api", "hive", *args],
                             input=stdin, capture_output=True, text=True, env=self.env)
        return out

    def agent_containers(self, agent):
        """The ids of the containers Hive made for `agent` in this deployment."""
        return subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=hive.instance={self.project}",
             "--filter", f"label=hive.agent={agent}"], capture_output=True, text=True).stdout.split()

    def teardown(self):
        subprocess.run([*self.compose_cmd, "down", "-v", "--remove-orphans"],
                       capture_output=True, env=self.env)
        for label in (f"hive.instance={self.project}", f"hive.lease={self.project}"):
            ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"],
                                 capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        vols = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=hive.instance={self.project}"],
                              capture_output=True, text=True).stdout.split()
        if vols:
            subprocess.run(["docker", "volume", "rm", "-f", *vols], capture_output=True)
        subprocess.run(["docker", "network", "rm", self.network], capture_output=True)


@pytest.fixture
def deployment(compose, hive_image, sol_image, sub_agent_image, tmp_path):
    d = Deployment(compose, hive_image, sol_image, tmp_path)
    try:
        d.up()
        yield d
    except BaseException:
        print(d.logs("agent-api"), d.logs("sol"))
        raise
    finally:
        d.teardown()


#: An agent of the admin's, declared by a person with the admin key.
ADMINS_AGENT = """apiVersion: hive/v1
kind: Agent
metadata: {{name: admins-own}}
spec: {{image: "{image}", command: [sleep, "3600"], state: Stopped}}
"""


@pytest.fixture(scope="session")
def sub_agent_image(test_image) -> str:
    """The test image under a name the deployment's policy lets Sol's sub-agents run
    (busybox:*), tagged locally (nothing is pulled)."""
    tagged = "busybox:hive-test"
    subprocess.run(["docker", "tag", test_image, tagged], check=True)
    return tagged


@each_compose
def test_sol_runs_a_sub_agent_through_agent_api_and_talks_to_it_on_hive_net(deployment, sub_agent_image):
    d = deployment
    # Sol holds no way to the engine: no socket, no DOCKER_HOST, no engine port on its gateway.
    checks = dict(line.split(": ", 1) for line in d.in_sol(SOL_NO_ENGINE).splitlines())
    assert checks["sockets"] == "[]" and checks["DOCKER_HOST"] == "None", checks
    assert checks["tcp 2375"].startswith("closed") and checks["tcp 2376"].startswith("closed"), checks
    # agent-api answers on hive-net only.
    api = docker_json("inspect", d.container("agent-api"))[0]
    assert not api["HostConfig"].get("PortBindings"), api["HostConfig"].get("PortBindings")
    assert all(not bound for bound in (api["NetworkSettings"]["Ports"] or {}).values())
    assert list(api["NetworkSettings"]["Networks"]) == [d.network]

    # The README's step: a secret for Sol's sub-agents (owner sol), set through the hive
    # client inside agent-api with the admin key, from stdin.
    page = f"hello from {d.project}"
    out = d.hive("secret", "set", "web-page", "--owner", "sol", "--from-env-file", "-",
                 stdin=f"PAGE={page}\n")
    assert out.stdout.strip() == "secret/web-page set: PAGE", out

    # Sol declares a sub-agent serving that page, through nanobot's registry and agent_manager.
    answer = d.tool({
        "action": "create", "name": "web", "image": sub_agent_image, "secrets": ["web-page"],
        "command": ["sh", "-c", "busybox mkdir -p /tmp/www && echo \"$PAGE\" > /tmp/www/index.html"
                    " && exec busybox httpd -f -p 8080 -h /tmp/www"],
    })
    assert answer.startswith("agent web declared (generation 1)"), answer
    assert "web: " in d.tool({"action": "list"})
    status = d.tool({"name": "web"}, step="wait-running")
    assert status.startswith("agent web: phase Running"), status
    # Sol reaches it by its name on hive-net.
    assert d.in_sol(SOL_FETCH, "http://web:8080/") == page

    # The container is Hive's, with its labels and hardening, and Sol's sub-agent is owned
    # by sol (Sol's key is an operator of sol, not the admin).
    (cid,) = d.agent_containers("web")
    c = docker_json("inspect", cid)[0]
    labels = c["Config"]["Labels"]
    assert labels["hive.managed"] == "true" and labels["hive.agent"] == "web", labels
    assert labels["hive.owner"] == "sol", labels
    assert labels["hive.owner"] and labels["hive.uid"] and labels["hive.spec-hash"], labels
    host = c["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host["Privileged"], host
    assert "no-new-privileges" in host["SecurityOpt"] and host["PidsLimit"] > 0 and host["Init"], host
    assert host["NetworkMode"] == d.network and not host.get("Binds"), host
    assert all(m["Type"] == "volume" for m in c["Mounts"]), c["Mounts"]

    # Sol's key is refused on every admin route: the audit log, the manifests sync,
    # another owner's agent, a prune across owners.
    assert d.hive("apply", "-f", "-", stdin=ADMINS_AGENT.format(image=sub_agent_image)).returncode == 0
    assert d.as_sol("GET", "/v1/audit")[0] == 403
    assert d.as_sol("GET", "/v1/sync")[0] == 403
    assert d.as_sol("GET", "/v1/agents/admins-own")[0] == 404
    status, body = d.as_sol("PUT", "/v1/agents/admins-own", {
        "apiVersion": "hive/v1", "kind": "Agent", "metadata": {"name": "admins-own"},
        "spec": {"image": sub_agent_image}})
    assert status == 409, body
    status, body = d.as_sol("POST", "/v1/apply?prune=true&applyset=x&pruneOwners=admin", [])
    assert status == 403, body
    assert d.hive("get", "admins-own").returncode == 0, "the admin's agent is untouched"
    # An image outside the policy is refused, and the refusal reaches Sol as a sentence
    # naming the rule.
    answer = d.tool({"action": "create", "name": "rogue", "image": "evil:1",
                     "command": ["sleep", "60"]})
    assert "owners.sol.images.allow" in answer, answer
    assert not d.agent_containers("rogue")
    # No key's value is in agent-api's or Sol's container description, but Sol's own key
    # in Sol's environment.
    api_seen = json.dumps(docker_json("inspect", d.container("agent-api")))
    sol_seen = docker_json("inspect", d.container("sol"))[0]
    assert d.keys["admin"] not in api_seen and d.keys["sol"] not in api_seen
    assert d.keys["admin"] not in json.dumps(sol_seen)
    sol_env = sol_seen["Config"]["Env"]
    assert f"AGENT_API_KEY={d.keys['sol']}" in sol_env
    assert d.keys["sol"] not in json.dumps({k: v for k, v in sol_seen.items() if k != "Config"})

    # Stop: the container stops; remove: it goes.
    assert d.tool({"action": "stop", "name": "web"}).startswith("stop of agent web requested")
    wait_for("web's container to stop",
             lambda: not docker_json("inspect", cid)[0]["State"]["Running"])
    assert d.tool({"action": "remove", "name": "web"}) == "agent web is being removed"
    wait_for("web's container to go", lambda: not d.agent_containers("web"))
    assert "no agents" == d.tool({"action": "list"})


@each_compose
def test_compose_down_leaves_the_agents_and_up_takes_them_back(deployment, sub_agent_image):
    d = deployment
    d.tool({"action": "create", "name": "keeper", "image": sub_agent_image, "command": ["sleep", "3600"]})
    assert d.tool({"name": "keeper"}, step="wait-running").startswith("agent keeper: phase Running")
    (cid,) = d.agent_containers("keeper")

    # `down` removes agent-api and Sol; the agent Hive made stays, untouched.
    d.compose("down")
    assert d.container("agent-api") is None and d.container("sol") is None
    assert docker_json("inspect", cid)[0]["State"]["Running"]

    # `up` again: Hive reads the same store (hive-data) and keeps the same container.
    d.up()
    assert d.tool({"name": "keeper"}, step="wait-running").startswith("agent keeper: phase Running")
    assert d.agent_containers("keeper") == [cid]
    info = d.tool({"action": "status", "name": "keeper"})
    assert "generation 1 (observed 1)" in info, info
    # Deleting through Hive is what removes an agent.
    d.tool({"action": "remove", "name": "keeper"})
    wait_for("keeper's container to go", lambda: not d.agent_containers("keeper"))
