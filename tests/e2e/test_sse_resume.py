"""Resumable SSE on 2025-11-25 session streams (SEP-1699; MCP 2025-11-25 basic/transports,
"Resumability and Redelivery"), with raw HTTP against a live gateway in front of the everything
fixture.

Event ids and a priming event with ``retry`` on POST and GET streams; a client that drops a POST
stream mid-call resumes with ``GET`` + ``Last-Event-ID`` and gets every later event and the
response exactly once; unknown, foreign and malformed ids are refused; the replay buffer's caps
hold; a session of an older version gets today's stream; a JSON answer is untouched.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anyio
import pytest

from tests.e2e.conftest import GatewayFactory, stdio_server
from toolcrib.app import Running
from toolcrib.gateway.edge.resume import parse_event_id

pytestmark = pytest.mark.anyio

EVERYTHING = {"ev": stdio_server("tests.servers.everything")}
BOTH = "application/json, text/event-stream"
Event = dict[str, str]


def _init(version: str) -> dict[str, Any]:
    client = {"name": "resume", "version": "1"}
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": client}
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}


async def _session(s: aiohttp.ClientSession, url: str, version: str = "2025-11-25") -> dict[str, str]:
    async with s.post(url, json=_init(version), headers={"Accept": BOTH}) as r:
        assert r.status == 200
        sid = r.headers["Mcp-Session-Id"]
    hdrs = {"Accept": BOTH, "Mcp-Session-Id": sid, "MCP-Protocol-Version": version}
    async with s.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs) as r:
        assert r.status == 202
    return hdrs


def _progress_call(rid: int) -> dict[str, Any]:
    params = {"name": "ev__test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": f"p{rid}"}}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


async def _next_event(r: aiohttp.ClientResponse) -> Event | None:
    """The next SSE event (fields as text; comments skipped), or None at the end of the body."""
    event: Event = {}
    while True:
        raw = await r.content.readline()
        if not raw:
            return event or None
        line = raw.decode().rstrip("\r\n")
        if not line:
            if event:
                return event
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        event[name] = value[1:] if value.startswith(" ") else value


async def _rest(r: aiohttp.ClientResponse) -> list[Event]:
    out = []
    while (event := await _next_event(r)) is not None:
        out.append(event)
    return out


def _messages(events: list[Event]) -> list[dict[str, Any]]:
    return [json.loads(e["data"]) for e in events if e.get("data")]


async def _resume(s: aiohttp.ClientSession, url: str, hdrs: dict[str, str], last: str) -> tuple[int, list[Event]]:
    get_headers = {**hdrs, "Accept": "text/event-stream", "Last-Event-ID": last}
    async with s.get(url, headers=get_headers) as r:
        if r.status != 200:
            return r.status, [{"text": await r.text()}]
        return r.status, await _rest(r)


async def _call_done(rt: Running, sid: str) -> None:
    """Wait (up to 20 s) until every POST stream of session ``sid`` has its response."""
    replay = rt.http.sessions[sid].replay
    assert replay is not None
    with anyio.fail_after(20):
        while not all(log.done for log in replay.streams.values() if not log.standalone):
            await anyio.sleep(0.05)


async def test_post_and_get_streams_have_ids_priming_and_retry(gateway: GatewayFactory) -> None:
    async with gateway(EVERYTHING) as rt, aiohttp.ClientSession() as s:
        hdrs = await _session(s, rt.url)
        async with s.post(rt.url, json=_progress_call(2), headers=hdrs) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = await _rest(r)
        priming, rest = events[0], events[1:]
        assert priming["data"] == "" and int(priming["retry"]) > 0 and parse_event_id(priming["id"]) is not None
        ids = [parse_event_id(e["id"]) for e in events]
        assert all(i is not None for i in ids)
        assert len({i[0] for i in ids if i}) == 1, "one stream"
        assert [i[1] for i in ids if i] == list(range(len(events))), "seq 0 (priming), 1, 2, ..."
        msgs = _messages(rest)
        assert [m.get("method") for m in msgs[:-1]] == ["notifications/progress"] * 3
        assert msgs[-1]["id"] == 2 and "executed successfully" in json.dumps(msgs[-1]["result"])
        # the GET stream opens with its own priming event (another stream id)
        async with s.get(rt.url, headers={**hdrs, "Accept": "text/event-stream"}) as g:
            first = await _next_event(g)
            assert first is not None and first["data"] == "" and int(first["retry"]) > 0
            got = parse_event_id(first["id"])
            assert got is not None and got[1] == 0 and got[0] != ids[0][0]  # type: ignore[index]
        # a request answered over the SDK loop (not a direct tools/call) is primed too: SSE-only Accept
        listing = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
        async with s.post(rt.url, json=listing, headers={**hdrs, "Accept": "text/event-stream"}) as r:
            events = await _rest(r)
        assert events[0]["data"] == "" and "id" in events[0] and "retry" in events[0]
        assert _messages(events)[0]["id"] == 3 and "id" in events[1]


async def test_json_answer_is_untouched(gateway: GatewayFactory) -> None:
    async with gateway(EVERYTHING) as rt, aiohttp.ClientSession() as s:
        hdrs = await _session(s, rt.url)
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "ev__test_simple_text"}}
        async with s.post(rt.url, json=call, headers=hdrs) as r:
            assert r.headers["Content-Type"].startswith("application/json")
            assert (await r.json())["id"] == 2
        replay = rt.http.sessions[hdrs["Mcp-Session-Id"]].replay
        assert replay is not None and not replay.streams, "a JSON answer opens no stream"


@pytest.mark.parametrize("keep", [1, 0], ids=["after-first-progress", "after-priming"])
async def test_dropped_post_stream_resumes_exactly_once(gateway: GatewayFactory, keep: int) -> None:
    async with gateway(EVERYTHING) as rt, aiohttp.ClientSession() as s:
        hdrs = await _session(s, rt.url)
        seen: list[Event] = []
        r = await s.post(rt.url, json=_progress_call(7), headers=hdrs)
        for _ in range(keep + 1):
            event = await _next_event(r)
            assert event is not None
            seen.append(event)
        r.close()  # the client drops the connection mid-call
        status, events = await _resume(s, rt.url, hdrs, seen[-1]["id"])
        assert status == 200, events
        msgs = _messages(events)
        progress = [m["params"]["progress"] for m in msgs if m.get("method") == "notifications/progress"]
        assert progress == [0, 50, 100][keep:], "every later event, once, in order"
        finals = [m for m in msgs if m.get("id") == 7]
        assert len(finals) == 1 and "executed successfully" in json.dumps(finals[0]["result"]), "not cancelled"
        assert msgs[-1] is finals[0], "the stream ends with its response"
        after = parse_event_id(seen[-1]["id"])
        assert after is not None
        seqs = [parse_event_id(e["id"]) for e in events if "id" in e]
        assert seqs == [(after[0], after[1] + n) for n in range(1, len(seqs) + 1)]


async def test_unknown_foreign_and_malformed_ids_are_refused(gateway: GatewayFactory) -> None:
    async with gateway(EVERYTHING) as rt, aiohttp.ClientSession() as s:
        mine = await _session(s, rt.url)
        other = await _session(s, rt.url)
        async with s.post(rt.url, json=_progress_call(2), headers=mine) as r:
            events = await _rest(r)
        real = events[1]["id"]
        status, body = await _resume(s, rt.url, other, real)
        assert status == 410 and body[0]["text"].count("\n") == 1, "another session's event id"
        stream, seq = parse_event_id(real) or ("", 0)
        for unknown in (f"{'0' * 16}-1", f"{stream}-{seq + 100}"):
            status, body = await _resume(s, rt.url, mine, unknown)
            assert status == 410, (unknown, body)
        for bad in ("abc", f"{stream}-01", f"{stream.upper()}-1", "1"):
            status, body = await _resume(s, rt.url, mine, bad)
            assert status == 400 and "Last-Event-ID" in body[0]["text"], (bad, body)
        status, _ = await _resume(s, rt.url, mine, real)
        assert status == 200, "the session's own id still resumes"


@pytest.mark.parametrize("cap", ["events", "bytes"])
async def test_replay_buffer_caps_hold(gateway: GatewayFactory, cap: str) -> None:
    async with gateway(EVERYTHING) as rt, aiohttp.ClientSession() as s:
        hdrs = await _session(s, rt.url)
        sid = hdrs["Mcp-Session-Id"]
        replay = rt.http.sessions[sid].replay
        assert replay is not None
        if cap == "events":
            replay.max_events = 2
        else:
            replay.max_bytes = 600
        r = await s.post(rt.url, json=_progress_call(2), headers=hdrs)
        priming = await _next_event(r)
        assert priming is not None
        r.close()
        await _call_done(rt, sid)
        assert replay.count <= replay.max_events and replay.size <= replay.max_bytes
        status, body = await _resume(s, rt.url, hdrs, priming["id"])
        assert status == 410 and "dropped" in body[0]["text"], "events it needs were trimmed: refused, not a gap"
        # the newest events are the ones kept: resuming from just before them works
        log = next(iter(replay.streams.values()))
        status, events = await _resume(s, rt.url, hdrs, f"{log.id}-{log.dropped}")
        assert status == 200 and _messages(events)[-1]["id"] == 2


async def test_older_protocol_version_gets_todays_stream(gateway: GatewayFactory) -> None:
    async with gateway(EVERYTHING) as rt, aiohttp.ClientSession() as s:
        hdrs = await _session(s, rt.url, version="2025-06-18")
        async with s.post(rt.url, json=_progress_call(2), headers=hdrs) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = await _rest(r)
        assert events and all("id" not in e and "retry" not in e and e["data"] for e in events)
        assert _messages(events)[-1]["id"] == 2
        assert rt.http.sessions[hdrs["Mcp-Session-Id"]].replay is None
        status, body = await _resume(s, rt.url, hdrs, f"{'a' * 16}-1")
        assert status == 400, body
