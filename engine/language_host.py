"""`pulumi-language-python` for this project: the language plugin the engine looks for to run a program.

The module proxy here serves no build of Pulumi's own Python language host (docs/engine.md), so
plain `pulumi up` / `pulumi preview` / `refresh --run-program` had nothing to run `__main__.py` with.
This is that plugin, built from the Python SDK's own language server (`pulumi.automation._server`, the
one the Automation API serves inline programs with): the engine starts it with its address as the last
argument, it prints the port it serves on, and `Run` executes the project's program in this process
the way an inline program runs (engine/workspace.py `inline_program`: same tuning, same results).

What the official host does beyond that is either not needed here or answered plainly:
- `InstallDependencies`: the virtualenv is made by `make` (pinned requirements), so nothing is installed;
- `GetRequiredPlugins`/`GetRequiredPackages`: the program needs no resource plugin but the dynamic
  provider host, which the engine finds by itself (engine/bin/pulumi-resource-pulumi-python);
- `RunPlugin` for a policy pack (`--policy-pack policy`): `python -m pulumi.policy ARGS DIR` with the
  pack's directory as its working directory, as pulumi-language-python does (sdk/python/cmd/
  pulumi-language-python/main.go RunPlugin, kind "analyzer"), its output streamed back.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import IO

import grpc
from pulumi.automation._server import LanguageServer
from pulumi.runtime.proto import language_pb2, language_pb2_grpc, plugin_pb2

from components.errors import UserError
from engine.orphans import exit_with_engine
from engine.workspace import inline_program

# The engine's gRPC messages (a Run request carries the whole stack config) can exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 400 * 1024 * 1024
VERSION = "3.274.1-silo"


class ProgramHost(LanguageServer):
    """The SDK's language server, with the program taken from each Run request instead of a closure."""

    def __init__(self, engine_address: str) -> None:
        super().__init__(program=lambda: None)
        self.engine_address = engine_address

    def Run(self, request, context):
        pwd = request.pwd or os.getcwd()
        target = Path(pwd, request.program or ".")
        main = target / "__main__.py" if target.is_dir() else target
        if not main.is_file():
            return language_pb2.RunResponse(error=f"no Python program at {main} (Pulumi.yaml `main`)")
        os.chdir(pwd)
        if pwd not in sys.path:
            sys.path.insert(0, pwd)
        failed: list[UserError] = []
        self.program = inline_program(main=main, user_errors=failed)
        # The SDK's server takes the engine's address from the request's first argument (the Automation
        # API passes it there); a language plugin gets it on its command line instead.
        forwarded = language_pb2.RunRequest()
        forwarded.CopyFrom(request)
        del forwarded.args[:]
        forwarded.args.append(self.engine_address)
        response = super().Run(forwarded, context)
        if failed:
            # Reported once already (its one line, as an error of the stack): `bail` tells the engine the
            # program failed and said why, so it adds no "an unhandled error occurred" copy of it.
            return language_pb2.RunResponse(bail=True)
        return response

    def GetPluginInfo(self, request, context):
        return plugin_pb2.PluginInfo(version=VERSION)

    def Handshake(self, request, context):
        return language_pb2.LanguageHandshakeResponse()

    def InstallDependencies(self, request, context):
        # `make` owns the virtualenv (pinned requirements); say so once rather than install anything.
        yield language_pb2.InstallDependenciesResponse(
            stdout=b"dependencies are managed by `make` (venv/ from requirements.txt); nothing to install\n"
        )

    def GetProgramDependencies(self, request, context):
        return language_pb2.GetProgramDependenciesResponse()

    def RunPlugin(self, request, context) -> Iterator[language_pb2.RunPluginResponse]:
        directory = request.info.program_directory or request.program or request.pwd
        if request.kind != "analyzer":
            yield language_pb2.RunPluginResponse(stderr=b"only policy packs run through this language host\n")
            yield language_pb2.RunPluginResponse(exitcode=1)
            return
        command = [sys.executable, "-u", "-m", "pulumi.policy", *request.args, directory]
        env = {**os.environ, **dict(e.split("=", 1) for e in request.env if "=" in e)}
        process = subprocess.Popen(command, cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        context.add_callback(process.kill)  # the engine hung up: the pack goes too
        lines: queue.Queue[language_pb2.RunPluginResponse | None] = queue.Queue()

        def pump(stream: IO[bytes], field: str) -> None:
            # Line by line: the engine reads the pack's port from its first line of stdout.
            for line in iter(stream.readline, b""):
                lines.put(language_pb2.RunPluginResponse(**{field: line}))
            lines.put(None)

        for stream, field in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            threading.Thread(target=pump, args=(stream, field), daemon=True).start()
        open_streams = 2
        while open_streams:
            item = lines.get()
            if item is None:
                open_streams -= 1
            else:
                yield item
        yield language_pb2.RunPluginResponse(exitcode=process.wait())


def engine_address(argv: list[str]) -> str:
    """The engine's address: the last argument that is not a flag (the engine puts its flags first)."""
    positional = [a for a in argv if not a.startswith("-")]
    if not positional:
        raise SystemExit("pulumi-language-python: the engine's address is required as the last argument")
    return positional[-1]


def main(argv: list[str] | None = None) -> None:
    address = engine_address(sys.argv[1:] if argv is None else argv)
    exit_with_engine()  # a killed engine does not stop its plugins (engine/orphans.py)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(ProgramHost(address), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    # The engine reads the port from the first line of our stdout.
    print(port, flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        # The engine interrupts its plugins when it is done with them: a normal end, not an error.
        server.stop(grace=None)


if __name__ == "__main__":
    main()
