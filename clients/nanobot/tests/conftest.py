"""Fixtures: a real `hive serve` (the binary cargo built) on a real store, driving the
real Docker engine, with the same locally made busybox image the Rust tests use."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
IMAGE = "hive-test-busybox:1"


def wait_until(what, check, timeout=60.0, step=0.1):
    """Polls `check` until it returns something true (returned), or fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="session")
def test_image() -> str:
    if docker("image", "inspect", IMAGE, check=False).returncode != 0:
        busybox = Path("/bin/busybox")
        assert busybox.exists(), "/bin/busybox (Debian's busybox-static) builds the test image"
        with tempfile.TemporaryDirectory() as d:
            tar_path = Path(d) / "rootfs.tar"
            with tarfile.open(tar_path, "w") as tar:
                tar.add(busybox, arcname="bin/busybox")
                for tool in ["sh", "sleep", "echo", "cat"]:
                    info = tarfile.TarInfo(f"bin/{tool}")
                    info.type = tarfile.SYMTYPE
                    info.linkname = "busybox"
                    tar.addfile(info)
            docker("import", "--change", "ENV PATH=/bin", str(tar_path), IMAGE)
    return IMAGE


@contextlib.contextmanager
def running_hive(tmp_path: Path, extra: list[str] = ()):
    """Runs `hive serve` with `extra` flags; yields (url, key); removes what it made afterwards."""
    binary = Path(os.environ.get("HIVE_BIN", REPO / "target" / "debug" / "hive"))
    assert binary.exists(), f"{binary} is missing: run `cargo build` (or cargo test) first"
    instance = f"py{uuid.uuid4().hex[:8]}"
    # Each Hive's agents get a network of their own (Hive makes it): agents of several
    # instances on one network would answer to each other's names.
    network = f"hive-test-{instance}"
    key = uuid.uuid4().hex
    log = tmp_path / "hive.log"
    env = {**os.environ, "AGENT_API_KEY": key, "RUST_LOG": "info"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(binary), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
             "--instance", instance, "--agent-network", network, "--resync-interval", "2s", *extra],
            stdout=subprocess.DEVNULL, stderr=out, env=env,
        )
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None:
            match = re.search(r"listening addr=(\S+)", log.read_text())
            if match:
                url = f"http://{match.group(1)}"
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"hive did not start:\n{log.read_text()}")
            else:
                time.sleep(0.05)
        yield url, key
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        ids = docker("ps", "-aq", "--filter", f"label=hive.instance={instance}").stdout.split()
        if ids:
            docker("rm", "-f", *ids, check=False)
        vols = docker("volume", "ls", "-q", "--filter", f"label=hive.instance={instance}").stdout.split()
        if vols:
            docker("volume", "rm", "-f", *vols, check=False)
        leases = docker("ps", "-aq", "--filter", f"label=hive.lease={instance}").stdout.split()
        if leases:
            docker("rm", "-f", *leases, check=False)
        docker("network", "rm", network, check=False)
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


@pytest.fixture
def hive(tmp_path: Path, test_image: str):
    """A `hive serve` with only the admin key: yields (url, key)."""
    with running_hive(tmp_path) as running:
        yield running


@pytest.fixture
def hive_keys(tmp_path: Path, test_image: str):
    """A `hive serve` with a keys file: yields (url, keys) where keys maps "admin", "sol"
    (operator of owner sol, id sol-1), "sol-viewer" (viewer of owner sol, id sol-view) and
    "bob" (operator of owner bob, id bob-1) to their keys."""
    keys = {"sol": ("sol-1", "sol", "operator"), "sol-viewer": ("sol-view", "sol", "viewer"),
            "bob": ("bob-1", "bob", "operator")}
    secrets = {name: uuid.uuid4().hex for name in keys}
    entries = "".join(
        f"  - id: {kid}\n    owner: {owner}\n    role: {role}\n"
        f"    sha256: {hashlib.sha256(secrets[name].encode()).hexdigest()}\n"
        for name, (kid, owner, role) in keys.items())
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("keys:\n" + entries)
    with running_hive(tmp_path, ["--keys-file", str(keys_file)]) as (url, admin):
        yield url, {"admin": admin, **secrets}
