"""An upstream's "resource not found" reaches each client in its own revision's code (SEP-2164):
-32602 with ``data.uri`` for a 2026-07-28 client, -32002 for a 2025-11-25 session, whichever era
the upstream speaks; the URI named is the one the client asked for."""

from __future__ import annotations

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.e2e.conftest import GatewayFactory, stdio_server

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"


@pytest.mark.parametrize("upstream", ["modern", "legacy"])
@pytest.mark.parametrize("client_era", [MODERN, "2025-11-25"])
async def test_resource_not_found_in_the_clients_era(gateway: GatewayFactory, upstream: str, client_era: str) -> None:
    args = ("--legacy",) if upstream == "legacy" else ()
    servers = {"everything": stdio_server("tests.servers.everything", *args)}
    async with (
        gateway(servers, keep_names=True) as rt,
        httpx2.AsyncClient(timeout=60) as http,
        Client(
            streamable_http_client(rt.url, http_client=http),
            mode="auto" if client_era == MODERN else "legacy",
            cache=None,
        ) as c,
    ):
        assert c.protocol_version == client_era
        uri = "test://no-such-resource"
        with pytest.raises(MCPError) as caught:
            await c.read_resource(uri)
        error = caught.value.error
        assert error.code == (-32602 if client_era == MODERN else -32002), error
        assert isinstance(error.data, dict) and error.data.get("uri") == uri
