# ruff: noqa: RUF001  (full-width CJK punctuation is what these tests feed the splitter)
"""split_steps: examples per language and hypothesis properties (no word lost, idempotent, bounded)."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from toolcrib.index.steps import ALL_RULES, CONNECTIVES, DEFAULT_RULES, MAX_STEPS, StepRules, split_steps, step_queries

SPLIT = [
    # English: commas/and before verbs, sentences, sequencing words, lists
    (
        "Read the sales data in sales.xlsx, plot it as a bar chart by month and save it in sale.png",
        ["Read the sales data in sales.xlsx", "plot it as a bar chart by month", "save it in sale.png"],
    ),
    (
        "First search for flights to Paris, then book a hotel near the Louvre",
        ["search for flights to Paris", "book a hotel near the Louvre"],
    ),
    (
        "Find the trending GitHub repositories. Then, draft an intro document for the top one.",
        ["Find the trending GitHub repositories.", "draft an intro document for the top one."],
    ),
    ("Get the weather for Oslo and after that email it to Bob", ["Get the weather for Oslo", "email it to Bob"]),
    ("Download the report; translate it into French", ["Download the report", "translate it into French"]),
    ("1. Get the weather\n2. Send it to Bob", ["Get the weather", "Send it to Bob"]),
    ("- fetch the page\n- summarize it in three lines", ["fetch the page", "summarize it in three lines"]),
    # Chinese
    ("先下载这个文件，然后把它转换成PDF，最后发邮件给老王", ["先下载这个文件", "把它转换成PDF", "发邮件给老王"]),
    ("查一下明天北京的天气并且提醒我带伞", ["查一下明天北京的天气", "提醒我带伞"]),
    ("打开文件接着删除第三行。保存一下", ["打开文件", "删除第三行", "保存一下"]),
    # Spanish
    ("Descarga el informe y luego envíalo a Ana por correo", ["Descarga el informe", "envíalo a Ana por correo"]),
    ("Busca vuelos a Lima y reserva un hotel barato", ["Busca vuelos a Lima", "reserva un hotel barato"]),
    ("Primero lee el archivo, después resume su contenido", ["lee el archivo", "resume su contenido"]),
    # German
    (
        "Lade die Datei herunter und dann speichere sie im Ordner Berichte",
        ["Lade die Datei herunter", "speichere sie im Ordner Berichte"],
    ),
    (
        "Suche das Wetter für Hamburg, anschließend schicke es an Jan",
        ["Suche das Wetter für Hamburg", "schicke es an Jan"],
    ),
    # French
    ("Télécharge le fichier puis envoie-le à Marie", ["Télécharge le fichier", "envoie-le à Marie"]),
    (
        "D'abord cherche un restaurant à Lyon, ensuite réserve une table pour deux",
        ["cherche un restaurant à Lyon", "réserve une table pour deux"],
    ),
    # Japanese
    ("ファイルをダウンロードしてから、PDFに変換して", ["ファイルをダウンロードして", "PDFに変換して"]),
]

UNCHANGED = [
    "What time is it in Tokyo",
    "I need some salt and pepper for the soup",
    "Please provide me with the latest news and updates related to Bitcoin mining",
    "I want to read a romantic book. Any recommendations?",
    "Can you suggest a hotel near Mount Fuji?",
    "Help me find Mr. Smith's address, e.g. from the company directory",
    "Show the changes between v1.2 and v1.3",
    "北京到上海的高铁票",
    "¿Qué hora es en Madrid?",
    "Wie spät ist es in Berlin?",
    "Quelle heure est-il à Paris ?",
    "watch https://www.youtube.com/watch?v=arj7oStGLkU",
    "",
    "   ",
]


@pytest.mark.parametrize(("text", "steps"), SPLIT)
def test_splits(text: str, steps: list[str]) -> None:
    assert split_steps(text, ALL_RULES) == steps


def test_default_rules_split_connectives_and_lists_only() -> None:
    assert split_steps("Get the weather for Oslo, then email it to Bob") == [
        "Get the weather for Oslo",
        "email it to Bob",
    ]
    assert split_steps("1. Get the weather\n2. Send it to Bob") == ["Get the weather", "Send it to Bob"]
    assert split_steps("先下载这个文件，然后把它转换成PDF") == ["先下载这个文件", "把它转换成PDF"]
    text = "Read the sales data in sales.xlsx, plot it as a bar chart and save it in sale.png"
    assert split_steps(text) == [text]
    assert split_steps("Find the repositories. Draft an intro for the top one.", DEFAULT_RULES) == [
        "Find the repositories. Draft an intro for the top one."
    ]


@pytest.mark.parametrize("text", UNCHANGED)
def test_one_step_is_unchanged(text: str) -> None:
    assert split_steps(text) == [text]
    assert split_steps(text, ALL_RULES) == [text]


def test_step_queries_put_the_task_first() -> None:
    text = "Get the weather for Oslo and then email it to Bob"
    assert (
        step_queries(text, rules=ALL_RULES)
        == step_queries(text)
        == [text, "Get the weather for Oslo", "email it to Bob"]
    )
    assert step_queries("What time is it in Tokyo") == ["What time is it in Tokyo"]
    many = "\n".join(f"{i}. fetch page number {i}" for i in range(1, 9))
    assert len(step_queries(many)) == 9
    assert len(step_queries(many, limit=4)) == 4


def test_too_many_pieces_is_one_query() -> None:
    text = "\n".join(f"fetch page number {i}" for i in range(MAX_STEPS + 1))
    assert split_steps(text) == [text]


VOCAB = [
    "and",
    "then",
    "and then",
    "after that",
    "finally",
    "also",
    "first",
    ",",
    ";",
    ".",
    "!",
    "?",
    "\n",
    "1.",
    "2)",
    "-",
    "•",
    "Step 3:",
    "find",
    "save",
    "send",
    "search",
    "read",
    "the report",
    "it to Bob",
    "salt",
    "pepper",
    "Mr.",
    "e.g.",
    "Any ideas?",
    "Thanks!",
    "Then",
    "Download",
    "y luego",
    "busca",
    "und dann",
    "speichere",
    "puis",
    "envoie",
    "然后",
    "接着",
    "并且",
    "最后",
    "，",
    "。",
    "；",
    "下载文件",
    "删除它",
    "それから",
    "して",
    "から",
    "、",
    "変換",
    "Überweisung",
    "l'été",
    "😀",
    "\u200b",
    "12",
    "3.5",
]
texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(VOCAB), max_size=40).map(" ".join),
    st.lists(st.sampled_from(VOCAB), max_size=40).map("".join),
    st.lists(st.one_of(st.sampled_from(VOCAB), st.text(max_size=6)), max_size=30).map(" ".join),
)
_TOKEN = re.compile(r"\w+")
_CJK_CONNECTIVES = sorted((w for w in CONNECTIVES if not w.isascii() and not re.search(r"[a-zà-ÿ]", w)), key=len)[::-1]


def _gap_is_droppable(gap: str) -> bool:
    """Only punctuation, whitespace, connectives and list-marker numbers may fall between steps."""
    gap = gap.lower()
    for word in _CJK_CONNECTIVES:  # written without spaces: remove them as substrings
        gap = gap.replace(word, " ")
    return all(t in CONNECTIVES or (t.isdigit() and len(t) <= 2) for t in _TOKEN.findall(gap))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts, st.sampled_from([DEFAULT_RULES, ALL_RULES, StepRules(sentences="all")]))
@example("0Bそれから!aND!ら!a", StepRules(sentences="none", and_verb=False))  # a step also inside a connective
def test_properties(text: str, rules: StepRules) -> None:
    steps = split_steps(text, rules)
    assert steps, "never an empty list"
    assert len(steps) <= MAX_STEPS
    if steps == [text]:
        return
    assert len(steps) >= 2
    pos = 0
    for step in steps:
        assert step.strip() and step == step.strip()
        found = text.find(step, pos)
        assert found >= 0, f"step {step!r} is not a substring of the input in order"
        # the step may also occur earlier inside a connective ('ら!a' in 'それから!a'): take the first
        # occurrence whose gap is droppable, if any
        while not _gap_is_droppable(text[pos:found]) and text.find(step, found + 1) >= 0:
            found = text.find(step, found + 1)
        assert _gap_is_droppable(text[pos:found]), f"words lost between steps: {text[pos:found]!r}"
        pos = found + len(step)
    assert _gap_is_droppable(text[pos:]), f"words lost at the end: {text[pos:]!r}"
    for step in steps:
        assert split_steps(step, rules) == [step], f"splitting {step!r} again splits it"


def test_linear_time_on_10_kb() -> None:
    """Adversarial 10 kB inputs (many candidate boundaries, no boundary at all) finish quickly."""
    inputs = [
        "find the file and " * 560,
        "a" * 10_000,
        ". " * 5_000,
        "然后" * 5_000,
        ", " * 5_000 + "x",
        " and" * 2_500,
        "Mr. " * 2_500,
    ]
    for text in inputs:
        started = time.perf_counter()
        for rules in (DEFAULT_RULES, ALL_RULES):
            assert split_steps(text, rules)
            assert split_steps(text[:3999], rules)
        assert time.perf_counter() - started < 5.0


def test_search_tools_searches_each_step() -> None:
    """dispatcher.search over a real in-memory index: one query with two steps finds both tools."""
    import mcp_types as types

    from toolcrib.index.documents import ToolDoc
    from toolcrib.index.embedder import HashingEmbedder
    from toolcrib.index.search import ToolIndex
    from toolcrib.router.catalog import Catalog, Entry
    from toolcrib.router.dispatcher import SearchArgs, search

    tools = {
        "weather__forecast": "Get the weather forecast for a city",
        "mail__send_email": "Send an email message to a person",
        "hotel__book_room": "Book a hotel room",
        "files__read_file": "Read a file from disk",
    }
    index = ToolIndex.open(None, HashingEmbedder())
    index.sync(
        [
            ToolDoc(key=k, server=k.split("__")[0], name=k.split("__")[1], description=d, input_schema={})
            for k, d in tools.items()
        ]
    )
    catalog = Catalog()
    for key, description in tools.items():
        server, name = key.split("__")
        catalog.tools[key] = Entry(key, server, name, types.Tool(name=name, description=description, input_schema={}))
    text = "Get the weather for Oslo and then send an email to Bob"
    found = [e.key for e, _ in search(index, catalog, SearchArgs((text,), 2, None), lambda _k: True)]
    assert set(found) == {"weather__forecast", "mail__send_email"}
    assert not index.needs_model(["Get the weather for Oslo", "send an email to Bob"])  # each step was embedded
    found = [e.key for e, _ in search(index, catalog, SearchArgs(("read a file",), 2, None), lambda _k: True)]
    assert found[0] == "files__read_file"
