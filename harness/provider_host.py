"""Client for the SDK's own dynamic provider host (`python -u -m pulumi.dynamic`), spoken over gRPC.

This is the process the engine starts as `pulumi-resource-pulumi-python`: it unpickles each resource's
`__provider` blob (by reference for classes in importable modules), calls `configure()` once per blob and
then the CRUD method. The host serves at most 4 calls at once; we deliberately add no locking here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from google.protobuf import struct_pb2
from pulumi.output import Unknown
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

PROVIDER_KEY = "__provider"


class ProviderError(Exception):
    """A provider call failed; `message` is the provider's own error (last traceback line)."""

    def __init__(self, method: str, urn: str, message: str, details: str = "") -> None:
        super().__init__(f"{method} failed for {urn}: {message}")
        self.method = method
        self.urn = urn
        self.message = message
        self.details = details


@dataclass
class DiffResult:
    changes: int  # provider_pb2.DiffResponse.DIFF_UNKNOWN / DIFF_NONE / DIFF_SOME
    replaces: list[str] = field(default_factory=list)
    delete_before_replace: bool = False


def _to_wire(value: Any) -> Any:
    """Plain Python value -> something `Struct.update` accepts; preview unknowns become the sentinel."""
    if isinstance(value, Unknown):
        return rpc.UNKNOWN
    if isinstance(value, Mapping):
        return {str(k): _to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    return value


def to_struct(props: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(_to_wire(props))
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Struct -> plain dict; unknowns are kept as `Unknown()` and any secret wrapping is removed."""
    props = rpc.deserialize_properties(struct, keep_unknowns=True)
    return {k: rpc.unwrap_rpc_secret(v) for k, v in props.items()}


def _provider_message(err: grpc.RpcError) -> tuple[str, str]:
    details = err.details() or str(err.code())
    lines = [line for line in details.strip().splitlines() if line.strip()]
    # The host aborts with a full traceback; after its last frame comes "<ExcType>: <message>", which
    # may span lines (psycopg puts the reason first and CONTEXT/DETAIL after it): keep all of it.
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    start = frames[-1] + 1 if frames else 0
    while frames and start < len(lines) and lines[start].startswith("    "):
        start += 1  # the frame's source and caret lines
    message = " ".join(line.strip() for line in lines[start:]) if start < len(lines) else details.strip()
    return message, details


class ProviderHost:
    """One `python -m pulumi.dynamic` process, configured with the whole (namespaced) stack config."""

    def __init__(
        self,
        project_dir: Path,
        project: str,
        config: Mapping[str, str],
        log_stream: IO[str] | None = None,
    ) -> None:
        self.project_dir = Path(project_dir)
        self.project = project
        self.config = dict(config)
        self._log_stream = log_stream if log_stream is not None else sys.stderr
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        self._stub: provider_pb2_grpc.ResourceProviderStub | None = None
        self._start_lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _start(self) -> provider_pb2_grpc.ResourceProviderStub:
        with self._start_lock:
            if self._stub is not None:
                return self._stub
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.project_dir), env.get("PYTHONPATH", "")) if p)
            # The host's `pulumi.dynamic.Config` prefixes un-namespaced keys with this project name.
            env["PULUMI_PROJECT"] = self.project
            self._proc = subprocess.Popen(
                [sys.executable, "-u", "-m", "pulumi.dynamic"],
                cwd=self.project_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
            )
            assert self._proc.stdout is not None
            first = self._proc.stdout.readline().decode().strip()
            if not first.isdigit():
                self._proc.kill()
                self._proc.wait()
                raise RuntimeError(f"dynamic provider host did not print its port (got {first!r})")
            # Anything the provider prints later is forwarded like the engine shows plugin output.
            threading.Thread(target=self._pump, args=(self._proc.stdout,), daemon=True).start()
            # The host puts the provider's whole traceback into grpc-message: allow more than 8 KB of
            # metadata so a long error reaches the user instead of "received metadata size exceeds".
            self._channel = grpc.insecure_channel(
                f"127.0.0.1:{first}", options=[("grpc.max_metadata_size", 4 * 1024 * 1024)]
            )
            grpc.channel_ready_future(self._channel).result(timeout=60)
            stub = provider_pb2_grpc.ResourceProviderStub(self._channel)
            stub.Configure(
                provider_pb2.ConfigureRequest(
                    variables=self.config,
                    args=to_struct(self.config),
                    acceptSecrets=True,
                    acceptResources=True,
                )
            )
            self._stub = stub
            return stub

    def _pump(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            try:
                self._log_stream.write(f"[provider] {line.decode(errors='replace')}")
                self._log_stream.flush()
            except ValueError:  # stream closed during shutdown
                return

    def _call(self, method: str, urn: str, request: Any) -> Any:
        stub = self._start()
        try:
            return getattr(stub, method)(request)
        except grpc.RpcError as err:
            message, details = _provider_message(err)
            raise ProviderError(method, urn, message, details) from None

    def check(self, urn: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> tuple[dict, list[tuple[str, str]]]:
        resp = self._call("Check", urn, provider_pb2.CheckRequest(urn=urn, olds=to_struct(olds), news=to_struct(news)))
        return from_struct(resp.inputs), [(f.property, f.reason) for f in resp.failures]

    def diff(
        self, urn: str, id_: str, olds: Mapping[str, Any], news: Mapping[str, Any], old_inputs: Mapping[str, Any]
    ) -> DiffResult:
        resp = self._call(
            "Diff",
            urn,
            provider_pb2.DiffRequest(
                id=id_, urn=urn, olds=to_struct(olds), news=to_struct(news), old_inputs=to_struct(old_inputs)
            ),
        )
        return DiffResult(resp.changes, list(resp.replaces), resp.deleteBeforeReplace)

    def create(self, urn: str, props: Mapping[str, Any]) -> tuple[str, dict]:
        resp = self._call("Create", urn, provider_pb2.CreateRequest(urn=urn, properties=to_struct(props)))
        return resp.id, from_struct(resp.properties)

    def update(
        self, urn: str, id_: str, olds: Mapping[str, Any], news: Mapping[str, Any], old_inputs: Mapping[str, Any]
    ) -> dict:
        resp = self._call(
            "Update",
            urn,
            provider_pb2.UpdateRequest(
                id=id_, urn=urn, olds=to_struct(olds), news=to_struct(news), old_inputs=to_struct(old_inputs)
            ),
        )
        return from_struct(resp.properties)

    def delete(self, urn: str, id_: str, props: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
        self._call(
            "Delete",
            urn,
            provider_pb2.DeleteRequest(id=id_, urn=urn, properties=to_struct(props), old_inputs=to_struct(inputs)),
        )

    def read(self, urn: str, id_: str, props: Mapping[str, Any], inputs: Mapping[str, Any]) -> tuple[str, dict, dict]:
        resp = self._call(
            "Read",
            urn,
            provider_pb2.ReadRequest(id=id_, urn=urn, properties=to_struct(props), inputs=to_struct(inputs)),
        )
        return resp.id, from_struct(resp.properties), from_struct(resp.inputs)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
