"""A serving gateway's heap: start-up objects frozen out of the cyclic collector's scans, and
young collections made rarely (``toolcrib.app.settle_heap``; the figures are in the docstring of
``GC_THRESHOLD`` and in ``benchmarks/results/load.md``)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from tests.e2e.conftest import make_config, stdio_server
from toolcrib.app import GC_THRESHOLD, running_gateway

pytestmark = pytest.mark.anyio


async def test_a_serving_gateway_has_frozen_its_start_up_heap_and_collects_young_objects_rarely(
    tmp_path: Path,
) -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    cfg = make_config({"echo": stdio_server("tests.servers.echo")}, tmp_path)
    try:
        async with running_gateway(cfg, connect_wait=20):
            assert gc.get_freeze_count() > 10_000  # modules, models, the catalog: out of every scan
            assert gc.get_threshold() == GC_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
