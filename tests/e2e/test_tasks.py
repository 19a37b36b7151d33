"""The tasks extension (SEP-2663) through a real toolcrib in front of the everything fixture (stdio).

Clients speak 2026-07-28 stateless HTTP: each POST carries its `_meta` envelope, with or without
`io.modelcontextprotocol/tasks` in `clientCapabilities.extensions`.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import anyio
import httpx
import pytest

from tests.e2e.conftest import GatewayFactory, stdio_server
from toolcrib.app import Running

pytestmark = pytest.mark.anyio

TASKS = "io.modelcontextprotocol/tasks"
VERSION = "2026-07-28"
_ids = itertools.count(1)


class Rpc:
    """A 2026-07-28 client: ``await rpc(method, params)`` -> the JSON-RPC ``result`` or ``error``."""

    def __init__(self, http: httpx.AsyncClient, url: str, *, tasks: bool = True) -> None:
        self.http, self.url = http, url
        self.caps: dict[str, Any] = {"elicitation": {}, **({"extensions": {TASKS: {}}} if tasks else {})}

    async def __call__(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        meta = {
            "io.modelcontextprotocol/protocolVersion": VERSION,
            "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": self.caps,
        }
        body = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": {**(params or {}), "_meta": meta}}
        headers = {"MCP-Protocol-Version": VERSION, "Mcp-Method": method, "Accept": "application/json"}
        name = (params or {}).get("name") or (params or {}).get("taskId")
        if isinstance(name, str):
            headers["Mcp-Name"] = name
        resp = await self.http.post(self.url, json=body, headers=headers)
        answer: dict[str, Any] = resp.json()
        return answer

    async def result(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = await self(method, params)
        assert "result" in answer, answer
        result: dict[str, Any] = answer["result"]
        return result

    async def until(self, task_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            state = await self.result("tasks/get", {"taskId": task_id})
            if state["status"] in statuses or time.monotonic() > end:
                return state
            await anyio.sleep(0.1)


def _servers() -> dict[str, dict[str, Any]]:
    return {"everything": stdio_server("tests.servers.everything")}


def _url(rt: Running) -> str:
    return rt.url if rt.url.endswith("/mcp") else rt.url.rstrip("/") + "/mcp"


async def test_task_created_polled_to_completion_and_advertised(gateway: GatewayFactory) -> None:
    async with gateway(_servers(), keep_names=True) as rt, httpx.AsyncClient(timeout=30) as http:
        rpc = Rpc(http, _url(rt))
        caps = (await rpc.result("server/discover"))["capabilities"]
        assert TASKS in caps.get("extensions", {})
        created = await rpc.result("tools/call", {"name": "slow_compute", "arguments": {"seconds": 0.3, "label": "x"}})
        assert created["resultType"] == "task"
        token = created["taskId"]
        assert token.startswith("tc1.") and created["status"] == "working"  # toolcrib's sealed id, not the upstream's
        done = await rpc.until(token, "completed", "failed", "cancelled")
        assert done["status"] == "completed" and done["taskId"] == token
        assert done["result"]["content"][0]["text"] == "Computed x in 0.3 s"


async def test_cancel_settles_cancelled(gateway: GatewayFactory) -> None:
    async with gateway(_servers(), keep_names=True) as rt, httpx.AsyncClient(timeout=30) as http:
        rpc = Rpc(http, _url(rt))
        token = (await rpc.result("tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}}))["taskId"]
        ack = await rpc.result("tasks/cancel", {"taskId": token})
        assert ack["resultType"] == "complete" and "taskId" not in ack and "status" not in ack
        assert (await rpc.until(token, "cancelled"))["status"] == "cancelled"


async def test_forged_or_foreign_task_ids_are_unknown(gateway: GatewayFactory) -> None:
    async with gateway(_servers(), keep_names=True) as rt, httpx.AsyncClient(timeout=30) as http:
        rpc = Rpc(http, _url(rt))
        real = (await rpc.result("tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}}))["taskId"]
        sealer = rt.gateway.sealer
        payload = {"server": "everything", "task": "task-1", "target": "slow_compute"}
        forged = [
            "tc1.AAAA",
            "task-1",  # the upstream's own id shape is not a task id here
            real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"),  # modified
            sealer.seal("task", "key:someone-else", payload, 60),  # another principal's
            sealer.seal("request_state", "local:operator", payload, 60),  # another purpose
        ]
        for task_id in forged:
            for method in ("tasks/get", "tasks/cancel"):
                answer = await rpc(method, {"taskId": task_id})
                assert answer.get("error", {}).get("code") == -32602, (method, task_id, answer)
        await rpc.result("tasks/cancel", {"taskId": real})


async def test_input_required_task_resumed_with_update(gateway: GatewayFactory) -> None:
    async with gateway(_servers(), keep_names=True) as rt, httpx.AsyncClient(timeout=30) as http:
        rpc = Rpc(http, _url(rt))
        created = await rpc.result("tools/call", {"name": "confirm_delete", "arguments": {"filename": "a.txt"}})
        token = created["taskId"]
        waiting = await rpc.until(token, "input_required")
        assert waiting["status"] == "input_required"
        (key,) = waiting["inputRequests"]
        assert waiting["inputRequests"][key]["method"] == "elicitation/create"
        answer = {key: {"action": "accept", "content": {"confirm": True}}}
        ack = await rpc.result("tasks/update", {"taskId": token, "inputResponses": answer})
        assert ack == {"resultType": "complete"} or set(ack) <= {"resultType", "_meta"}
        done = await rpc.until(token, "completed", "failed", "cancelled")
        assert done["status"] == "completed" and done["result"]["content"][0]["text"] == "Deleted a.txt"


async def test_client_without_the_extension(gateway: GatewayFactory) -> None:
    async with gateway(_servers(), keep_names=True) as rt, httpx.AsyncClient(timeout=30) as http:
        plain = Rpc(http, _url(rt), tasks=False)
        gated: list[tuple[str, dict[str, Any]]] = [
            ("tasks/get", {}),
            ("tasks/update", {"inputResponses": {}}),
            ("tasks/cancel", {}),
        ]
        for method, params in gated:
            answer = await plain(method, {"taskId": "gate-test", **params})
            error = answer.get("error", {})
            assert error.get("code") == -32021, answer
            assert TASKS in error["data"]["requiredCapabilities"]["extensions"]
        # toolcrib holds the upstream's task itself and answers the outcome.
        result = await plain.result("tools/call", {"name": "slow_compute", "arguments": {"seconds": 0.2, "label": "y"}})
        assert result.get("resultType") == "complete" and "taskId" not in result
        assert result["content"][0]["text"] == "Computed y in 0.2 s"
        # A task that needs input it cannot relay: -32021 naming the extension.
        answer = await plain("tools/call", {"name": "multi_input", "arguments": {}})
        assert answer.get("error", {}).get("code") == -32021, answer


async def test_task_through_invoke_in_dispatcher_mode(gateway: GatewayFactory) -> None:
    """invoke dispatches the real tool; its task comes back under toolcrib's sealed id and routes to
    the real tool's upstream (tasks/get, tasks/cancel), as in passthrough mode."""
    async with gateway(_servers(), mode="dispatcher") as rt, httpx.AsyncClient(timeout=30) as http:
        rpc = Rpc(http, _url(rt))
        args = {"tool": "everything__slow_compute", "arguments": {"seconds": 0.3, "label": "via-invoke"}}
        created = await rpc.result("tools/call", {"name": "invoke", "arguments": args})
        assert created["resultType"] == "task" and created["taskId"].startswith("tc1."), created
        done = await rpc.until(created["taskId"], "completed", "failed")
        assert done["status"] == "completed", done
        other = await rpc.result(
            "tools/call", {"name": "invoke", "arguments": {**args, "arguments": {"seconds": 30, "label": "x"}}}
        )
        cancelled = await rpc("tasks/cancel", {"taskId": other["taskId"]})
        assert "result" in cancelled, cancelled
        assert (await rpc.until(other["taskId"], "cancelled"))["status"] == "cancelled"
