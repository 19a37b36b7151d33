# ruff: noqa: RUF001, RUF002, SIM905  (full-width CJK punctuation is what these rules match)
"""Splitting one multi-step request into its steps, with cheap language-aware rules (no model).

``split_steps("Read sales.xlsx, then plot it as a bar chart; finally save it to sale.png")`` returns
``["Read sales.xlsx", "plot it as a bar chart", "save it to sale.png"]``; a request with one action
comes back unchanged as ``[text]``. The search of ``search_tools`` (:func:`step_queries`) then
searches the task as given plus each step and merges the rankings, so every step gets tools.

Rules, applied to clauses (text between hard boundaries); :data:`DEFAULT_RULES` uses the
connectives and lists only, :data:`ALL_RULES` everything below (see :class:`StepRules`):

* hard boundaries: line breaks (with list markers such as ``1.``, ``2)``, ``-``, ``•``, ``Step 3:``
  removed), sentence ends (``.``, ``!``, ``?`` before a capital letter, not after an abbreviation
  such as ``e.g.`` or ``Mr.``; ``。！？；`` always), ``;``, and sequencing connectives: English
  "then" (after a comma, ``;`` or "and", or bare before a verb), "after that", "afterwards",
  "finally", "lastly", "and also", "additionally", "in addition"; Chinese 然后, 接着, 并且, 随后
  (anywhere), 最后, 之后, 此外, 另外, 同时, 再 (after punctuation); Japanese それから, その後,
  次に, 最後に, そして, て-form + から; Spanish "luego", "después" (not "después de"),
  "a continuación", "finalmente", "por último", "además", "y también"; German "dann", "danach",
  "anschließend", "zum Schluss", "schließlich", "außerdem"; French "puis", "ensuite", "après cela",
  "enfin", "finalement", "de plus";
* "and" (y, und, et) or a comma directly before a verb of a small per-language lexicon of
  imperative/base forms ("... and save it", ", plot it"), only when at least two words precede it
  in the clause (since the last split) and at least two follow it: "salt and pepper" and "news and
  updates" are not steps;
* a piece without a content word ("Any recommendations?", "Thanks!", "Can you help me?") or with a
  single word is not a step: it joins the step before it (or after it, when it comes first).

Guarantees (tests/index/test_steps.py, hypothesis): never an empty list; at most
:data:`MAX_STEPS` steps, each non-empty (more pieces than that: the text is treated as one query);
no word of the input is lost except connectives (:data:`CONNECTIVES`) and list markers; splitting a
step again returns ``[step]``; runs in linear time (regular expressions without nested
quantifiers), never raises on any ``str``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: At most this many steps; a text with more pieces is searched as one query (a document, not a task).
MAX_STEPS = 8
#: Texts longer than this are not split (search_tools clips a query to 1,000 characters anyway).
MAX_CHARS = 4000

_VERBS_EN = (
    "add analyse analyze answer attach book build buy calculate check collect commit compare compile compose "
    "compress compute convert copy count create crop delete deploy describe design display download draft "
    "draw edit email evaluate execute explain export extract fetch fill find format generate get give "
    "identify import insert install introduce list load locate look make map merge monitor move notify "
    "open order organize organise outline plan play plot post prepare present print provide publish push "
    "put query read recommend record remember remind remove rename render reply report reserve resize "
    "retrieve review run save scan schedule search send set share show sort start store submit suggest "
    "summarise summarize take tell test track transcribe translate turn update upload verify visualise "
    "visualize write let"
)
_VERBS_ES = (
    "abre abrir añade añadir analiza analizar busca buscar calcula calcular compara comparar convierte "
    "convertir crea crear descarga descargar dibuja dibujar dime elimina eliminar envía enviar escribe "
    "escribir genera generar guarda guardar haz hacer lee leer lista listar manda mandar muestra mostrar "
    "pon poner prepara preparar publica publicar recomienda recomendar resume resumir sube subir traduce "
    "traducir borra borrar dame reserva reservar compra comprar consulta consultar revisa revisar cambia cambiar"
)
_VERBS_DE = (
    "berechne analysiere erstelle füge lade lies lösche öffne schreibe sende schicke speichere suche "
    "zeige zeig übersetze fasse konvertiere wandle vergleiche liste gib nenne plane buche exportiere "
    "drucke teile erzeuge generiere"
)
_VERBS_FR = (
    "ajoute analyse calcule cherche compare convertis crée dessine donne écris efface envoie enregistre "
    "exporte génère liste lis montre ouvre partage prépare publie recommande résume sauvegarde supprime "
    "télécharge traduis trouve affiche dis réserve imprime"
)
_VERB_WORDS = " ".join((_VERBS_EN, _VERBS_ES, _VERBS_DE, _VERBS_FR)).split()
_VERB = r"(?:" + "|".join(sorted(set(_VERB_WORDS), key=len, reverse=True)) + r")"

#: Words the splitter may drop (connectives and conjunctions it splits on), lowercase.
CONNECTIVES = frozenset(
    (
        "and then after that afterwards finally lastly also additionally in addition first firstly "
        "next plus y luego después a continuación finalmente por último además también primero "
        "und dann danach anschließend zum schluss schließlich außerdem zuerst erst "
        "et puis ensuite après cela ça enfin finalement de plus d'abord d abord "
        "然后 接着 并且 随后 最后 之后 此外 另外 同时 再 首先 "
        "それから その後 次に 最後に そして から まず step schritt paso étape"
    ).split()
)

_LIST_MARKER = r"(?:[-*•·▪●◦]|\(?\d{1,2}[.)．、:：]|\(\d{1,2}\)|(?:step|schritt|paso|étape)\s*\d{1,2}\s*[:.)]?)"
_ABBREV = frozenset(
    "e.g i.e etc vs mr mrs ms dr st no fig approx ca z.b bzw usw sr sra dra m mme cf al inc ltd co jr sen".split()
)

# Hard boundaries. Each alternative matches the whole separator (punctuation + connective words).
_HARD = re.compile(
    r"""
    (?P<line>[ \t]*(?:\r?\n[ \t]*)+(?:"""
    + _LIST_MARKER
    + r"""[ \t]+)?)
  | (?P<cjk>[。！？；]+[ \t]*|;+(?=\s|$)[ \t]*)
  | (?P<en>[ \t]*(?:[,;][ \t]*(?:and[ \t]+)?|[ \t]+and[ \t]+|(?<=[.!?])[ \t]+)
        (?:then|after[ \t]+that|afterwards|finally|lastly|also|additionally|in[ \t]+addition)\b[,:]?[ \t]*)
  | (?P<sent>(?<=[.!?])["'”’)\]]?[ \t]+(?=["'“‘(\[]?[A-ZÀ-ÖØ-Þ¿¡]))
  | (?P<enthen>[ \t]+then[ \t]+(?="""
    + _VERB
    + r"""\b))
  | (?P<zh>[，,、 \t]*(?:然后|接着|并且|随后)[，,]?[ \t]*|[，,；;][ \t]*(?:最后|之后|此外|另外|同时|再)[，,]?[ \t]*)
  | (?P<ja>[、，,]?[ \t]*(?:それから|その後|次に|最後に|そして)[、，,]?[ \t]*|(?<=て)から[、，,]?[ \t]*)
  | (?P<es>[ \t]*(?:,[ \t]*(?:y[ \t]+)?|[ \t]+y[ \t]+|[ \t]+)
        (?:luego|después(?![ \t]+de\b)|a[ \t]+continuación|finalmente|por[ \t]+último|además|también)\b[,:]?[ \t]*)
  | (?P<de>[ \t]*(?:,[ \t]*(?:und[ \t]+)?|[ \t]+und[ \t]+|[ \t]+)
        (?:dann|danach|anschließend|zum[ \t]+schluss|schließlich|außerdem)\b[,:]?[ \t]*)
  | (?P<fr>[ \t]*(?:,[ \t]*(?:et[ \t]+)?|[ \t]+et[ \t]+|[ \t]+)
        (?:puis|ensuite|après[ \t]+(?:cela|ça)|enfin|finalement|de[ \t]+plus)\b[,:]?[ \t]*)
    """,
    re.IGNORECASE | re.VERBOSE,
)
# "and"/"y"/"und"/"et"/comma before a verb: split only when enough words are on both sides.
_SOFT = re.compile(
    r"[ \t]*(?:,[ \t]*(?:(?:and|y|und|et)[ \t]+)?|[ \t]+(?:and|y|und|et)[ \t]+)(?=" + _VERB + r"\b)",
    re.IGNORECASE,
)
_LEADING = re.compile(
    r"""(?:[\s,;:，；、。.!?！？]+
    |(?:first(?:ly)?|then|next,|after\ that|afterwards|finally|lastly|also|additionally|in\ addition|and|plus
       |primero|luego|después(?!\s+de\b)|finalmente|por\ último|además|y
       |zuerst|erst|dann|danach|anschließend|zum\ schluss|schließlich|außerdem|und
       |d['’]abord|puis|ensuite|enfin|finalement|et)\b[,:]?
    |(?:首先|然后|接着|并且|随后|最后|此外|另外|同时|まず|それから|その後|次に|最後に|そして)[，,、]?
    |"""
    + _LIST_MARKER
    + r"""(?=\s)
    )+""",
    re.IGNORECASE | re.VERBOSE,
)
_TRAILING = re.compile(r"[\s,;:，；、]+$")
_WORD = re.compile(r"[^\W\d_]+|\d+", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_GENERIC = frozenset(
    (
        "a an the i me my we us our you your it its this that these those is are am be was were will would can "
        "could should do does did have has had there here any some please pls thanks thank hi hello hey ok okay "
        "great so also just really very much lot of to for in on at with about what which who how why when "
        "where know let tell help need want looking look recommend recommendation recommendations suggest "
        "suggestion suggestions option options idea ideas advice tool tools out up and or but if not no yes "
        "sure possible anything something appreciate cheers "
        "por favor gracias ayuda ayudar puedes podrías me mi yo tú el la los las un una es qué algo "
        "bitte danke hilf hilfe kannst du mir ich mein das die der ein eine ist was "
        "merci aide peux tu moi je mon le la les un une est quoi s'il te plaît"
    ).split()
)
_GENERIC_CJK = ("谢谢", "请问", "可以吗", "好吗", "麻烦了", "ありがとう", "お願いします")


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _size(text: str) -> int:
    """Words in ``text``, counting two CJK characters (rounded up) as one word."""
    cjk = len(_CJK.findall(text))
    latin = sum(1 for w in _words(text) if not _CJK.search(w))
    return latin + (cjk + 1) // 2


def _is_step(text: str) -> bool:
    """Whether a piece is worth its own search: two words or more, at least one of them not generic."""
    if _size(text) < 2:
        return False
    if _CJK.search(text):
        rest = text
        for phrase in _GENERIC_CJK:
            rest = rest.replace(phrase, "")
        return len(_CJK.findall(rest)) >= 2 or any(w.lower() not in _GENERIC for w in _words(rest))
    return any(w.lower() not in _GENERIC and not w.isdigit() for w in _words(text))


def _sentence_end_ok(text: str, start: int) -> bool:
    """False when the period before ``start`` ends an abbreviation or an initial ("Mr.", "e.g.", "J.")."""
    end = start
    while end > 0 and text[end - 1] in "\"'”’)]":
        end -= 1
    if end == 0 or text[end - 1] != ".":
        return True
    word = re.search(r"([\w.]+)\.$", text[max(0, end - 12) : end])
    if word is None:
        return True
    token = word.group(1).lower()
    if token.isdigit():  # "1. Do this": a list marker, not a sentence
        return len(token) > 2
    return token not in _ABBREV and not (len(token) == 1 and token.isalpha())


@dataclass(frozen=True)
class StepRules:
    """Which rules split (the benchmark compares them on its tuning split; see benchmarks/retrieval.py).

    ``sentences``: ``"all"`` splits at every Latin-script sentence end, ``"verb"`` only before a
    sentence that starts with a verb of the lexicon (optionally after "please"/"now"), ``"none"``
    never (``。！？`` always split). ``and_verb``: split at "and"/comma before a verb.
    """

    sentences: str = "verb"
    and_verb: bool = True


#: Chosen on the benchmark's tuning split (benchmarks/results/retrieval.md): connectives and lists
#: only. The sentence and "and + verb" rules moved LiveMCPBench set-R@10 by -0.01 to +0.01 there and
#: split 2-9x more single-tool MetaTool queries, so they are off by default.
DEFAULT_RULES = StepRules(sentences="none", and_verb=False)
#: Every rule on (what the unit tests exercise).
ALL_RULES = StepRules()
_SENT_VERB = re.compile(
    r"(?:please[ \t]+|now[ \t]+|por[ \t]+favor,?[ \t]+|bitte[ \t]+)?" + _VERB + r"\b", re.IGNORECASE
)


def _clauses(text: str, rules: StepRules) -> list[tuple[int, int]]:
    """Spans of ``text`` between hard boundaries."""
    spans = []
    pos = 0
    for m in _HARD.finditer(text):
        if m.lastgroup == "sent" and (
            rules.sentences == "none"
            or not _sentence_end_ok(text, m.start())
            or (rules.sentences == "verb" and _SENT_VERB.match(text, m.end()) is None)
        ):
            continue
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(text)))
    return spans


def _soft_split(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Split one clause at "and"/comma + verb where at least two words are on each side."""
    spans = []
    pos = start
    for m in _SOFT.finditer(text, start, end):
        if _size(text[pos : m.start()]) >= 2 and _size(text[m.end() : end]) >= 2:
            spans.append((pos, m.start()))
            pos = m.end()
    spans.append((pos, end))
    return spans


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """Narrow a span past leading connectives/list markers and trailing separators."""
    while True:
        m = _LEADING.match(text, start, end)
        if m is None or m.end() == start:
            break
        start = m.end()
    m = _TRAILING.search(text, start, end)
    if m is not None:
        end = m.start()
    return start, end


def split_steps(text: str, rules: StepRules = DEFAULT_RULES) -> list[str]:
    """The steps of a request that names several actions, else ``[text]``.

    Args:
        text: one search query as a user or model wrote it (any language, any length).
        rules: which rules split (:data:`DEFAULT_RULES` unless comparing them).

    Returns:
        ``[text]`` unchanged when the text has one step (or more than :data:`MAX_STEPS` pieces, or
        more than :data:`MAX_CHARS` characters); otherwise 2 to :data:`MAX_STEPS` non-empty steps,
        each a stripped substring of ``text`` in order, without the connectives between them.

    Never raises.
    """
    if len(text) > MAX_CHARS or not text.strip():
        return [text]
    pieces: list[tuple[int, int]] = []
    for c_start, c_end in _clauses(text, rules):
        soft = _soft_split(text, c_start, c_end) if rules.and_verb else [(c_start, c_end)]
        for s, e in soft:
            s, e = _trim(text, s, e)
            if s < e and _WORD.search(text, s, e):
                pieces.append((s, e))
    if len(pieces) > MAX_STEPS * 2:
        return [text]
    # Pieces that are not steps on their own join the step before them (or after them, when first).
    steps: list[list[int]] = []
    pending: int | None = None
    for s, e in pieces:
        if _is_step(text[s:e]):
            steps.append([s if pending is None else pending, e])
            pending = None
        elif steps:
            steps[-1][1] = e
        elif pending is None:
            pending = s
    if not 2 <= len(steps) <= MAX_STEPS:
        return [text]
    return [text[s:e] for s, e in steps]


def step_queries(text: str, limit: int = 10, rules: StepRules = DEFAULT_RULES) -> list[str]:
    """What ``search_tools`` searches for one query: ``[text]``, or the task plus each of its steps.

    The task text comes first, so with the round-robin merge its best tool stays the first result;
    at most ``limit`` queries in all.
    """
    steps = split_steps(text, rules)
    if len(steps) < 2:
        return [text]
    return [text, *steps][:limit]
