"""Fixtures for the index tests: realistic tool documents and a counting embedder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from toolcrib.index.documents import ToolDoc
from toolcrib.index.embedder import HashingEmbedder


class CountingEmbedder:
    """A HashingEmbedder that records how many texts it embedded."""

    def __init__(self, fingerprint: str = "hashing-v1-256") -> None:
        self._inner = HashingEmbedder()
        self.model_id = "hashing"
        self.dim = self._inner.dim
        self.fingerprint = fingerprint
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        return self._inner.embed(texts)


def tool(server: str, name: str, description: str, **params: str) -> ToolDoc:
    schema = {"type": "object", "properties": {p: {"type": "string", "description": d} for p, d in params.items()}}
    return ToolDoc(key=f"{server}__{name}", server=server, name=name, description=description, input_schema=schema)


CATALOG = [
    tool("time", "get_current_time", "Get current time in a specific timezone", timezone="IANA timezone name"),
    tool("time", "convert_time", "Convert time between timezones", source_timezone="from", time="HH:MM"),
    tool("git", "git_status", "Shows the working tree status", repo_path="Path to the repository"),
    tool("git", "git_commit", "Records changes to the repository", repo_path="Path", message="Commit message"),
    tool("git", "git_log", "Shows the commit logs", repo_path="Path", max_count="How many"),
    tool("fs", "read_file", "Read the complete contents of a file from the file system", path="File path"),
    tool("fs", "write_file", "Create a new file or overwrite a file with new content", path="Path", content="Text"),
    tool("fs", "list_directory", "Get a listing of all files and directories in a path", path="Directory"),
    tool("weather", "get_forecast", "Weather forecast for a city for the next days", city="City name"),
]


@pytest.fixture
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture
def catalog() -> list[ToolDoc]:
    return list(CATALOG)
