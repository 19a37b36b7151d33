"""Run a toolcrib gateway as its own process for benchmarks (so its CPU time can be read).

    python -m benchmarks.gateway_proc CONFIG --port PORT [--no-trust] [--profile OUT.pstats]

Prints ``LISTENING <url>`` once upstreams are connected; stops on SIGTERM/SIGINT. ``--no-trust``
rebuilds the dispatch pipeline without the audit, redaction and policy layers (argument
validation and the upstream edge stay), to measure the trust layer's share. ``--profile`` runs
the event loop under cProfile and writes the stats on exit.
"""

from __future__ import annotations

import argparse
import cProfile
import signal
import sys
from functools import partial
from pathlib import Path

import anyio

from toolcrib.app import running_gateway
from toolcrib.config import load_config
from toolcrib.gateway.pipeline import Pipeline, validation_layer
from toolcrib.serve import run


async def serve(config_path: Path, port: int, no_trust: bool) -> None:
    config, _ = load_config(config_path)
    config = config.model_copy(update={"gateway": config.gateway.model_copy(update={"port": port})})
    async with running_gateway(config, connect_wait=60) as rt:
        if no_trust:
            gw = rt.gateway
            catalog = gw.pool.catalog
            gw.pipeline = Pipeline(
                [validation_layer(lambda key: e.tool.input_schema if (e := catalog.tools.get(key)) else None)],
                gw.forwarder,
            )
        print(f"LISTENING {rt.url}", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gateway_proc")
    p.add_argument("config", type=Path)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--no-trust", action="store_true")
    p.add_argument("--profile", type=Path)
    args = p.parse_args()
    prof = cProfile.Profile() if args.profile else None
    if prof is not None:
        prof.enable()
    try:
        run(partial(serve, args.config, args.port, args.no_trust))
    finally:
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(args.profile))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
