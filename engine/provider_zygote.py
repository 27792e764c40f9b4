"""A warm start for the dynamic-provider host, for processes that run many stacks (`silo serve`'s worker).

Every `pulumi up` starts its own provider host (engine/provider_host.py), and that host spends most of
its CPU importing: the SDK, gRPC, the Cloudflare SDK, psycopg and the providers themselves, about 0.6 s of
a host's 0.8 s for one town (py-spy over `bench/run.py`'s API creates). The service's worker runs 20
creates at once on two cores, so those imports alone were 12 CPU-seconds of a burst.

So the worker keeps one process (this module, `serve`) that has imported all of that once, and forks a
host from it on demand; a fork shares those pages and starts serving in milliseconds. The engine still
starts the plugin the usual way (engine/bin/pulumi-resource-pulumi-python); the launcher finds
`SILO_PROVIDER_ZYGOTE` and runs `engine.provider_client`, which hands its stdin, stdout and stderr, its
arguments, environment and directory to this process over a Unix socket (SCM_RIGHTS) and stands in for
the host: it passes on the signals the engine sends (SIGINT at the end of a run) and exits with the
host's code. The host itself is the same code as a cold one (provider_host.main), serving on the
engine's pipes.

What a crash leaves: a host watches its client, not this process, and exits when the client is gone
(the engine killed it, or died: engine/orphans.py); the client watches its engine the same way and ends
its host first. This process watches its parent, the worker, and exits with it; hosts it forked carry on
until their runs end. Without a zygote (none running, the socket refused) the client starts a cold host,
so a `pulumi up` never depends on it.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import pkgutil
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SOCKET_ENV = "SILO_PROVIDER_ZYGOTE"
MAX_REQUEST = 1 << 20  # arguments and environment of one host
REQUEST_TIMEOUT_S = 5.0


def preload() -> None:
    """Everything a host imports before and while serving its first calls: the SDK's host and every
    provider module (whichever a stack's resources name, walked rather than listed so a new one is not
    forgotten)."""
    import cloudflare  # noqa: F401  (imported at its client's first use, and the largest of all)
    import dill  # noqa: F401  (the SDK's host unpickles providers with it)
    import pulumi.dynamic  # noqa: F401
    from pulumi.runtime.proto import provider_pb2_grpc  # noqa: F401

    import components.providers
    import engine.provider_host  # noqa: F401

    for module in pkgutil.walk_packages(components.providers.__path__, "components.providers."):
        importlib.import_module(module.name)


def serve(path: Path) -> None:
    preload()
    gc.freeze()  # what was imported stays shared with every fork (no collector writes to its pages)
    parent = os.getppid()
    old_umask = os.umask(0o077)  # the socket: this user's only (it starts code with the caller's env)
    try:
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(64)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    clients: dict[int, socket.socket] = {}  # host pid -> the connection its exit code goes to
    try:
        while os.getppid() == parent:
            for _key, _mask in selector.select(timeout=0.2):
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                pid = _start(conn, listener, selector)
                if pid:
                    clients[pid] = conn
            _reap(clients)
    finally:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # made for this socket alone (start())


def _start(conn: socket.socket, listener: socket.socket, selector: selectors.BaseSelector) -> int:
    """Fork a host for the client on `conn`; its pid (0 if the request was unreadable)."""
    conn.settimeout(REQUEST_TIMEOUT_S)  # a client that connects and sends nothing does not stall the others
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 3)
        while len(data) < MAX_REQUEST and (more := conn.recv(MAX_REQUEST)):  # the client half-closes when sent
            data += more
        request = json.loads(data)
    except (OSError, ValueError):
        conn.close()
        return 0
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return 0
    pid = os.fork()
    if pid == 0:  # the host
        try:
            selector.close()
            listener.close()
            conn.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = [sys.argv[0], *request["args"]]
            signal.signal(signal.SIGINT, signal.default_int_handler)
            from engine import provider_host

            provider_host.main(watch_pid=int(request["client_pid"]))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except KeyboardInterrupt:
            code = 0  # the engine's SIGINT at the end of a run
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(f"{pid}\n".encode())
    except OSError:  # the client is gone: its host sees that and exits
        conn.close()
        return 0
    return pid


def _reap(clients: dict[int, socket.socket]) -> None:
    """Collect every host that ended (also those whose client left early), telling its client the code."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = clients.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):  # the client is gone: its host was ending anyway
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            conn.close()


def start() -> subprocess.Popen[bytes]:
    """Start a zygote for this process's stacks: every CLI it starts from now on (they inherit the
    environment) gets its provider hosts from it. The socket is in a directory of its own, 0700, under
    the system's temporary directory (a Unix socket's path is limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="silo-providers-")) / "zygote.sock"
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "engine.provider_zygote", str(path)], cwd=Path(__file__).resolve().parent.parent
    )
    os.environ[SOCKET_ENV] = str(path)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    path = os.environ.pop(SOCKET_ENV, "")
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    if path:
        shutil.rmtree(Path(path).parent, ignore_errors=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
