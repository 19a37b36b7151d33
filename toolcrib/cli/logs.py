"""Logging for the CLI: levels for ``-v`` / ``-vv`` and the ``--log-json`` line format.

- no flag: warnings and errors only;
- ``-v``: toolcrib's own INFO lines too (one per ``/mcp`` request on ``toolcrib.requests``, upstream
  connections, renames); every other library stays at WARNING, so third-party chatter is silent;
- ``-vv``: DEBUG for everything, third-party libraries included.

``--log-json`` writes one JSON object per line to stderr:
``{"ts": ISO-8601 UTC, "level", "logger", "message", ...}``, plus the request fields
(``http``, ``method``, ``target``, ``principal``, ``status``, ``outcome``, ``ms``) on request lines
and ``exc`` (the formatted traceback) when there is one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import warnings
from typing import Any

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
_MARK = "_toolcrib_cli_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "request", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(verbose: int, as_json: bool = False) -> None:
    """Configure logging to stderr for ``verbose`` (the count of ``-v``) and the format.

    Like :func:`logging.basicConfig`, a root logger that already has someone else's handlers (a
    host process, pytest) keeps them and gets none; a second call replaces only its own handler.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _MARK, False)]
    if len(ours) == len(root.handlers):
        for old in ours:
            root.removeHandler(old)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    own = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.NOTSET
    logging.getLogger("toolcrib").setLevel(own)
    if verbose < 2:  # libraries that warn at import about things the user cannot act on
        warnings.filterwarnings("ignore", module=r"(transformers|huggingface_hub|onnxruntime|torch|bm25s)(\.|$)")
