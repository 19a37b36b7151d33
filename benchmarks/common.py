# ruff: noqa: RUF001  (the non-English queries use full-width punctuation)
"""Shared pieces of the index benchmarks: dataset loading and an on-disk embedding cache.

Datasets use the ``../shared/data`` format: ``tools.jsonl`` lines
``{"server","name","description","input_schema"}`` and ``queries.jsonl`` lines
``{"query","relevant":["server/name",...]}`` (optional ``steps``: the task's step plan, one step
per line). A directory of ``tools/list`` dumps (``<server>.json`` with a ``tools`` array, like
``real-servers/``) is read as a tool file too. MetaTool's ``name_for_human`` is read as the
tool's ``title`` (MCP's human-readable name). A dump directory has no queries, so the handwritten set
:data:`REAL_SERVER_QUERIES` is used for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolcrib.index.documents import ToolDoc
from toolcrib.index.embedder import Embedder

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".toolcrib" / "bench-cache"
DATA = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Query:
    """One benchmark query and the tool ids (``server/name``) that answer it."""

    text: str
    relevant: tuple[str, ...]
    kind: str = "single"
    steps: tuple[str, ...] = ()
    groups: tuple[frozenset[str], ...] = field(default=())
    lang: str = "en"


#: Which half of a dataset a query belongs to (:func:`split_of`).
TUNE, REPORT = "tune", "report"


def split_of(text: str) -> str:
    """``"tune"`` or ``"report"``: the low bit of the first byte of SHA-256 of the query text (UTF-8).

    Deterministic and independent of order, sampling and the other queries; the same text always
    falls in the same half. Settings are chosen on ``tune``; headline figures are ``report``.
    """
    return TUNE if hashlib.sha256(text.encode("utf-8")).digest()[0] & 1 == 0 else REPORT


def tool_id(doc: ToolDoc) -> str:
    """The dataset id of a tool: ``server/name``."""
    return f"{doc.server}/{doc.name}"


def _doc(server: str, tool: dict[str, Any]) -> ToolDoc:
    return ToolDoc(
        key=f"{server}__{tool['name']}",
        server=server,
        name=str(tool["name"]),
        description=str(tool.get("description") or ""),
        input_schema=tool.get("input_schema") or tool.get("inputSchema") or {},
        title=tool.get("title") or tool.get("name_for_human"),
    )


def load_tools(path: Path) -> list[ToolDoc]:
    """Tools from a ``tools.jsonl`` file or a directory of ``tools/list`` dumps."""
    if path.is_dir():
        docs = []
        for dump in sorted(path.glob("*.json")):
            if dump.name.startswith("_"):
                continue
            data = json.loads(dump.read_text(encoding="utf-8"))
            docs.extend(_doc(dump.stem, t) for t in data.get("tools", []))
        return docs
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [_doc(str(row["server"]), row) for row in rows]


_STEP_PREFIX = re.compile(r"^\s*(?:step\s*)?\d+\s*[.):-]\s*", re.IGNORECASE)


def split_steps(steps: str) -> tuple[str, ...]:
    """``"1. do x\\n2. do y"`` -> ``("do x", "do y")``."""
    out = []
    for line in steps.splitlines():
        text = _STEP_PREFIX.sub("", line).strip()
        if text:
            out.append(text)
    return tuple(out)


def _groups(relevant: Sequence[str]) -> tuple[frozenset[str], ...]:
    """Relevant ids grouped by tool name: a name listed on several servers counts once ("any of")."""
    by_name: dict[str, set[str]] = {}
    for rid in relevant:
        by_name.setdefault(rid.split("/", 1)[-1], set()).add(rid)
    return tuple(frozenset(g) for g in by_name.values())


def make_query(text: str, relevant: Sequence[str], kind: str = "single", steps: str = "", lang: str = "en") -> Query:
    """Build a :class:`Query` with its relevance groups."""
    rel = tuple(relevant)
    return Query(text, rel, kind, split_steps(steps), _groups(rel), lang)


def load_queries(path: Path | None, tools_path: Path) -> list[Query]:
    """Queries from ``queries.jsonl``, or the handwritten sets for a ``real-servers`` directory.

    For a dump directory: :data:`REAL_SERVER_QUERIES` (English) then :data:`NON_ENGLISH_QUERIES`
    (``Query.lang`` set); all of kind ``single`` (several ids there are alternatives written by hand).
    """
    if path is None:
        if tools_path.is_dir():
            english = [make_query(q, rel) for q, rel in REAL_SERVER_QUERIES]
            return english + [make_query(q, rel, lang=lang) for q, rel, lang in NON_ENGLISH_QUERIES]
        raise SystemExit(f"--queries is required for {tools_path}")
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            relevant = row.get("relevant") or []
            if not relevant:
                continue
            kind = row.get("type") or ("multi" if len(relevant) > 1 else "single")
            out.append(make_query(str(row["query"]), relevant, kind, str(row.get("steps") or "")))
    return out


class CachedEmbedder:
    """Wraps an embedder with a persistent text -> vector cache (``.toolcrib/bench-cache``).

    The inner model is created only when a text is missing from the cache.
    """

    def __init__(self, make_inner: Any, model_id: str, fingerprint: str, dim: int, name: str) -> None:
        self._make_inner = make_inner
        self._inner: Embedder | None = None
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.dim = dim
        digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
        self._file = CACHE_DIR / f"{name}-{digest}.npz"
        self._keys: dict[str, int] = {}
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self.computed = 0
        if self._file.exists():
            data = np.load(self._file, allow_pickle=False)
            self._vectors = data["vectors"]
            self._keys = {str(k): i for i, k in enumerate(data["keys"])}

    @property
    def inner(self) -> Embedder:
        """The wrapped embedder, loaded on first use."""
        if self._inner is None:
            self._inner = self._make_inner()
        return self._inner

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts``, computing (and caching) only the missing ones."""
        keys = [self._key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._keys))
        if missing:
            by_key = {k: t for k, t in zip(keys, texts, strict=True)}
            fresh = self.inner.embed([by_key[k] for k in missing])
            self.computed += len(missing)
            base = len(self._vectors)
            self._vectors = np.vstack([self._vectors, fresh])
            for i, k in enumerate(missing):
                self._keys[k] = base + i
        rows = [self._keys[k] for k in keys]
        return self._vectors[rows] if rows else np.zeros((0, self.dim), dtype=np.float32)

    def save(self) -> None:
        """Write the cache file (only when something new was computed)."""
        if not self.computed:
            return
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        keys = np.array(sorted(self._keys, key=self._keys.__getitem__))
        tmp = self._file.with_suffix(".tmp.npz")
        np.savez(tmp, vectors=self._vectors, keys=keys)
        tmp.replace(self._file)


def cached_default_embedder(name: str = "minilm") -> CachedEmbedder:
    """The offline MiniLM embedder behind the disk cache (its fingerprint known without loading it)."""
    from toolcrib.index.embedder import DEFAULT_MODEL, OFFLINE_ONNX_SHA256, FastEmbedEmbedder

    return CachedEmbedder(FastEmbedEmbedder, DEFAULT_MODEL, f"{DEFAULT_MODEL}@sha256:{OFFLINE_ONNX_SHA256}", 384, name)


#: Handwritten queries for the ``real-servers`` dumps (written for this benchmark; no source set exists).
REAL_SERVER_QUERIES: list[tuple[str, list[str]]] = [
    ("what time is it in Tokyo", ["mcp-server-time/get_current_time"]),
    ("convert 3pm New York time to Berlin time", ["mcp-server-time/convert_time"]),
    ("which day of the week is it right now in London", ["mcp-server-time/get_current_time"]),
    ("download the content of a web page", ["mcp-server-fetch/fetch"]),
    ("get the markdown of https://example.com", ["mcp-server-fetch/fetch"]),
    (
        "show the uncommitted changes in my repository",
        ["mcp-server-git/git_diff_unstaged", "mcp-server-git/git_status"],
    ),
    ("commit the staged files with a message", ["mcp-server-git/git_commit"]),
    ("stage these files for the next commit", ["mcp-server-git/git_add"]),
    ("list recent commits", ["mcp-server-git/git_log"]),
    ("create a new feature branch", ["mcp-server-git/git_create_branch"]),
    ("switch to the main branch", ["mcp-server-git/git_checkout"]),
    ("unstage everything", ["mcp-server-git/git_reset"]),
    ("what does commit abc123 contain", ["mcp-server-git/git_show"]),
    ("which branches exist", ["mcp-server-git/git_branch"]),
    ("read the contents of config.yaml", ["server-filesystem/read_text_file", "server-filesystem/read_file"]),
    ("open this PNG image", ["server-filesystem/read_media_file"]),
    ("save this text into notes.txt", ["server-filesystem/write_file"]),
    ("replace a line in a source file", ["server-filesystem/edit_file"]),
    ("make a new folder called build", ["server-filesystem/create_directory"]),
    ("what files are in the src directory", ["server-filesystem/list_directory"]),
    ("show the folder tree recursively", ["server-filesystem/directory_tree"]),
    ("rename report.txt to final.txt", ["server-filesystem/move_file"]),
    ("find all python files matching *.py", ["server-filesystem/search_files"]),
    ("how big is this file and when was it modified", ["server-filesystem/get_file_info"]),
    ("which directories am I allowed to access", ["server-filesystem/list_allowed_directories"]),
    ("remember that Alice works at Acme", ["server-memory/create_entities", "server-memory/add_observations"]),
    ("record that Bob manages Alice", ["server-memory/create_relations"]),
    ("what do you remember about Alice", ["server-memory/search_nodes", "server-memory/open_nodes"]),
    ("dump the whole knowledge graph", ["server-memory/read_graph"]),
    ("forget the entity Bob", ["server-memory/delete_entities"]),
    ("think through this hard problem step by step", ["server-sequential-thinking/sequentialthinking"]),
    ("add two numbers", ["server-everything/get-sum"]),
    (
        "test that the server can ask the client's model for a completion",
        ["conformance-everything-server/test_sampling"],
    ),
    ("ask the user for input in the middle of a tool call", ["conformance-everything-server/test_elicitation"]),
    ("return a tiny image", ["server-everything/get-tiny-image", "conformance-everything-server/test_image_content"]),
    ("echo back my message", ["server-everything/echo"]),
    ("print the environment variables of the server", ["server-everything/get-env"]),
    ("compress a file with gzip", ["server-everything/gzip-file-as-resource"]),
    (
        "run a long operation that reports progress",
        ["server-everything/trigger-long-running-operation", "conformance-everything-server/test_tool_with_progress"],
    ),
]


#: Handwritten non-English queries for the ``real-servers`` dumps: ``(text, relevant ids, language)``
#: with ISO 639-1 language codes. Written for this benchmark in each language's own everyday phrasing
#: (not translations of :data:`REAL_SERVER_QUERIES`); the tools' descriptions are all English.
NON_ENGLISH_QUERIES: list[tuple[str, list[str], str]] = [
    # Chinese
    ("现在悉尼几点了", ["mcp-server-time/get_current_time"], "zh"),
    ("北京时间晚上八点是纽约的几点", ["mcp-server-time/convert_time"], "zh"),
    ("帮我抓取这个网址的网页内容", ["mcp-server-fetch/fetch"], "zh"),
    ("看一下仓库里哪些文件被改过还没提交", ["mcp-server-git/git_status", "mcp-server-git/git_diff_unstaged"], "zh"),
    ("把改动提交一下，提交信息写“修复登录问题”", ["mcp-server-git/git_commit"], "zh"),
    ("新建一个叫 dev 的分支", ["mcp-server-git/git_create_branch"], "zh"),
    ("列出当前目录下的所有文件", ["server-filesystem/list_directory"], "zh"),
    ("把会议纪要写进 notes.md 文件", ["server-filesystem/write_file"], "zh"),
    ("记住张三是我们的产品经理", ["server-memory/create_entities", "server-memory/add_observations"], "zh"),
    ("计算一下 17 加 25 等于多少", ["server-everything/get-sum"], "zh"),
    # Spanish
    ("¿qué hora es ahora mismo en Ciudad de México?", ["mcp-server-time/get_current_time"], "es"),
    ("si en Madrid son las 10 de la mañana, ¿qué hora es en Buenos Aires?", ["mcp-server-time/convert_time"], "es"),
    ("bájame el texto de esta página web", ["mcp-server-fetch/fetch"], "es"),
    ("enséñame el historial de commits del proyecto", ["mcp-server-git/git_log"], "es"),
    ("quiero cambiarme a la rama develop", ["mcp-server-git/git_checkout"], "es"),
    ("añade el archivo README al área de preparación", ["mcp-server-git/git_add"], "es"),
    ("crea una carpeta nueva que se llame fotos", ["server-filesystem/create_directory"], "es"),
    ("busca todos los ficheros .json dentro del proyecto", ["server-filesystem/search_files"], "es"),
    ("¿qué sabes de mi cliente García?", ["server-memory/search_nodes", "server-memory/open_nodes"], "es"),
    ("repíteme exactamente lo que te escribo", ["server-everything/echo"], "es"),
    # German
    ("Wie spät ist es gerade in Berlin?", ["mcp-server-time/get_current_time"], "de"),
    ("Rechne 15 Uhr Londoner Zeit in Tokioter Zeit um", ["mcp-server-time/convert_time"], "de"),
    ("Lade mir den Inhalt von https://example.org herunter", ["mcp-server-fetch/fetch"], "de"),
    ("Welche Änderungen habe ich schon zum Commit vorgemerkt?", ["mcp-server-git/git_diff_staged"], "de"),
    ("Zeig mir die Unterschiede zwischen dem Hauptzweig und meinem Feature-Zweig", ["mcp-server-git/git_diff"], "de"),
    ("Welche Branches gibt es im Repository?", ["mcp-server-git/git_branch"], "de"),
    (
        "Öffne die Datei config.toml und zeig mir, was drinsteht",
        ["server-filesystem/read_text_file", "server-filesystem/read_file"],
        "de",
    ),
    ("Benenne die Datei bericht.pdf in bericht_final.pdf um", ["server-filesystem/move_file"], "de"),
    ("Wie groß ist diese Datei und wann wurde sie zuletzt geändert?", ["server-filesystem/get_file_info"], "de"),
    ("Lösch alles, was du über Herrn Becker gespeichert hast", ["server-memory/delete_entities"], "de"),
    # French
    ("Quelle heure est-il à Montréal en ce moment ?", ["mcp-server-time/get_current_time"], "fr"),
    ("récupère le contenu de cette page et donne-le moi en markdown", ["mcp-server-fetch/fetch"], "fr"),
    ("annule l'indexation de tous mes fichiers", ["mcp-server-git/git_reset"], "fr"),
    ("montre-moi ce que contient le commit 4f2a9c1", ["mcp-server-git/git_show"], "fr"),
    ("affiche l'arborescence complète du dossier src", ["server-filesystem/directory_tree"], "fr"),
    ("corrige une ligne dans le fichier main.py sans tout réécrire", ["server-filesystem/edit_file"], "fr"),
    ("lis ces trois fichiers d'un coup", ["server-filesystem/read_multiple_files"], "fr"),
    ("note que Marie est la sœur de Paul", ["server-memory/create_relations"], "fr"),
    (
        "réfléchis à ce problème étape par étape avant de répondre",
        ["server-sequential-thinking/sequentialthinking"],
        "fr",
    ),
    # Japanese
    ("ロンドンの現在時刻を教えて", ["mcp-server-time/get_current_time"], "ja"),
    ("日本時間の午後3時はニューヨークだと何時？", ["mcp-server-time/convert_time"], "ja"),
    ("このURLのページを取ってきて", ["mcp-server-fetch/fetch"], "ja"),
    ("まだステージしていない変更の差分を見せて", ["mcp-server-git/git_diff_unstaged"], "ja"),
    ("最近のコミット履歴を表示して", ["mcp-server-git/git_log"], "ja"),
    ("この画像ファイルを開いて見せて", ["server-filesystem/read_media_file"], "ja"),
    ("各ファイルのサイズ付きでフォルダの中身を一覧表示して", ["server-filesystem/list_directory_with_sizes"], "ja"),
    ("アクセスできるディレクトリはどれ？", ["server-filesystem/list_allowed_directories"], "ja"),
    ("ナレッジグラフ全体を読み込んで", ["server-memory/read_graph"], "ja"),
    ("サーバーの環境変数を見せて", ["server-everything/get-env"], "ja"),
]
