"""Warm provider hosts (engine/provider_zygote.py): the engine starts the plugin as always
(engine/bin/pulumi-resource-pulumi-python) and gets a host forked from a process that has imported
everything already; it ends like a cold one, leaves nothing behind when killed, and a dead zygote costs
only the warm start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from pulumi.runtime.proto import provider_pb2_grpc

from engine import provider_zygote
from engine.orphans import alive

LAUNCHER = Path(__file__).resolve().parents[2] / "engine" / "bin" / "pulumi-resource-pulumi-python"


@pytest.fixture
def zygote() -> Iterator[subprocess.Popen[bytes]]:
    saved = os.environ.get(provider_zygote.SOCKET_ENV)
    proc = provider_zygote.start()
    path = Path(os.environ[provider_zygote.SOCKET_ENV])
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, "the zygote exited at start"
        assert time.monotonic() < deadline, "the zygote never listened"
        time.sleep(0.05)
    try:
        yield proc
    finally:
        provider_zygote.stop(proc)
        if saved is not None:
            os.environ[provider_zygote.SOCKET_ENV] = saved


def _plugin() -> tuple[subprocess.Popen[bytes], int]:
    """The plugin as the engine starts it (a process group of its own), and the port it announced."""
    env = {**os.environ, "PULUMI_PYTHON_CMD": sys.executable}
    proc = subprocess.Popen(
        [str(LAUNCHER), "127.0.0.1:1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    assert line.isdigit(), (line, proc.stderr.read().decode()[-2000:] if proc.stderr else "")
    return proc, int(line)


def _serves(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        info = provider_pb2_grpc.ResourceProviderStub(channel).GetPluginInfo(empty_pb2.Empty(), timeout=10)
    return bool(info.version)


def _hosts(zygote: subprocess.Popen[bytes]) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(zygote.pid)], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def _until(condition, seconds: float = 10) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_a_warm_host_serves_the_engine_and_ends_on_its_interrupt(zygote: subprocess.Popen[bytes]) -> None:
    plugin, port = _plugin()
    try:
        assert _serves(port)
        [host] = _hosts(zygote)  # forked by the zygote: not a cold start
        os.killpg(plugin.pid, signal.SIGINT)  # what the engine sends its plugins at the end of a run
        assert plugin.wait(timeout=10) == 0
        assert _until(lambda: not alive(host)), "the host outlived its plugin"
    finally:
        if plugin.poll() is None:
            os.killpg(plugin.pid, signal.SIGKILL)


def test_a_killed_plugin_takes_its_warm_host_along(zygote: subprocess.Popen[bytes]) -> None:
    plugin, port = _plugin()
    assert _serves(port)
    [host] = _hosts(zygote)
    os.killpg(plugin.pid, signal.SIGKILL)  # the engine's last resort, or the engine itself killed
    plugin.wait(timeout=10)
    assert _until(lambda: not alive(host)), "a warm host kept serving after its plugin was killed"
    assert zygote.poll() is None  # the zygote serves the next run


def test_without_a_zygote_the_plugin_starts_cold(zygote: subprocess.Popen[bytes]) -> None:
    zygote.kill()  # dead: its socket file is left, and refuses
    zygote.wait(timeout=10)
    plugin, port = _plugin()
    try:
        assert _serves(port)
    finally:
        os.killpg(plugin.pid, signal.SIGINT)
        plugin.wait(timeout=10)
