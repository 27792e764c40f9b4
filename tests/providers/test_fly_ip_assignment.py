"""A create never returns an empty id (the engine fails it: "plugin returned empty resource.ID"). The
IP-assignment create answer is the one place an id comes from a field the API may leave out; here a
loopback proxy in front of the emulator drops it, and the provider finds the address in the app's list."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pulumi.dynamic import Config as DynamicConfig
from pulumi.dynamic import ConfigureRequest

from components.providers.fly.apps import FlyAppProvider
from components.providers.fly.ip_assignments import FlyIpAssignmentProvider


class _DropAddress(BaseHTTPRequestHandler):
    """Forwards to the emulator; removes `ip` from the answer to POST .../ip_assignments."""

    upstream = ""

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        answer = httpx.request(self.command, self.upstream + self.path, content=body, headers=headers, timeout=30)
        content = answer.content
        if self.command == "POST" and self.path.endswith("/ip_assignments") and answer.status_code < 300:
            content = json.dumps({k: v for k, v in answer.json().items() if k != "ip"}).encode()
        self.send_response(answer.status_code)
        for key, value in answer.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_DELETE = do_PUT = _forward

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def proxy_url(fly_emulator) -> Iterator[str]:
    handler = type("Handler", (_DropAddress,), {"upstream": fly_emulator.url})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def configured(provider, url: str):
    provider.configure(ConfigureRequest(DynamicConfig({"fly:apiToken": "test", "fly:apiUrl": url}, "silo")))
    return provider


@pytest.mark.parametrize("ip_type", ["private_v6", "v6", "shared_v4"])
def test_ip_create_without_an_address_in_the_answer_still_returns_the_address_as_id(
    proxy_url: str, fly_emulator, ip_type: str
) -> None:
    configured(FlyAppProvider(), proxy_url).create({"name": "devenv-acme-erp-kong", "org": "acme"})
    result = configured(FlyIpAssignmentProvider(), proxy_url).create({"app": "devenv-acme-erp-kong", "type": ip_type})
    [ip] = fly_emulator.snapshot()["ips"]["devenv-acme-erp-kong"]
    assert result.id == ip["ip"] != ""
    assert result.outs["address"] == ip["ip"]
