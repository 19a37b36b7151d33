"""A cheap language guess for tool descriptions: Unicode script, then stopwords for Latin script.

Used by ``[index] model = "auto"`` to tell a mostly non-English catalog (which gets the
multilingual model) from an English one (which keeps MiniLM). No model, no data files:

1. Every letter (``str.isalpha``) is assigned a script group from the first word of its Unicode
   name (``unicodedata.name``: ``LATIN``, ``CYRILLIC``, ``ARABIC``, ...). Han, Hiragana and
   Katakana form one group ``cjk``; Hangul is ``hangul``. CJK and Hangul characters weigh
   :data:`IDEOGRAPH_WEIGHT` letters each (one character carries about a short word).
2. The group with the largest weighted count wins (ties: :data:`GROUP_ORDER`, then name order).
3. ``cjk`` is ``ja`` when any kana is present, else ``zh``; ``hangul`` is ``ko``; other non-Latin
   groups are returned by their lowercase script name (``cyrillic``, ``arabic``, ``greek``, ...).
4. Latin script: the language whose stopwords (:data:`STOPWORDS`) occur most often among the
   words (ties: :data:`LATIN_ORDER`, English first); no stopword at all: ``latin``.

Every step is a sum over characters or words followed by an argmax with a fixed tie order, so the
label of ``a + " " + b`` equals the label of ``a`` whenever ``a`` and ``b`` share a label.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

#: Weight of one Han, kana or Hangul character against one Latin letter.
IDEOGRAPH_WEIGHT = 3
#: Script groups preferred on a tie, in order (any other group sorts after these, by name).
GROUP_ORDER = ("latin", "cjk", "hangul", "cyrillic", "arabic")
#: Latin-script languages preferred on a tie, in order.
LATIN_ORDER = ("en", "es", "fr", "de", "pt", "it", "nl")
#: Labels that count as English for :func:`is_non_english` (no letters, or Latin without a cue).
ENGLISH_LIKE = frozenset({"en", "latin", "none"})

#: Short, frequent function words per language (lowercase). Words shared by several languages
#: count for each of them.
_STOPWORD_TEXT = {
    "en": (
        "the a an of to and or in on for with from by is are be this that it its as at not "
        "you your which will can all into if when"
    ),
    "es": (
        "el la los las de del y o en un una unos unas para por con que es son al se su sus como este esta lo le más"
    ),
    "fr": "le la les de des du et ou en un une pour par avec que qui est sont au aux ce cette dans sur son ses pas",
    "de": (
        "der die das den dem des und oder in im ein eine einen einem für mit von zu ist sind "
        "auf aus bei nicht wird werden"
    ),
    "pt": "o a os as de do da dos das e ou em um uma para por com que é são no na nos nas ao se seu sua",
    "it": "il lo la i gli le di del della e o in un una per con che è sono al alla dei nel nella si suo sua",
    "nl": "de het een en of in op voor met van dat die is zijn te aan bij niet wordt naar",
}
STOPWORDS: dict[str, frozenset[str]] = {lang: frozenset(words.split()) for lang, words in _STOPWORD_TEXT.items()}

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_KANA = frozenset({"HIRAGANA", "KATAKANA"})


@functools.lru_cache(maxsize=8192)
def _script(ch: str) -> str:
    """The Unicode script word of a letter (``LATIN``, ``CJK``, ``HIRAGANA``, ...); ``""`` if unnamed."""
    name = unicodedata.name(ch, "")
    if not name:
        return ""
    first = name.split(" ", 1)[0]
    if first in ("FULLWIDTH", "HALFWIDTH") and " " in name:
        first = name.split(" ", 2)[1]
    return first


def _group(script: str) -> str:
    if script == "CJK" or script in _KANA:
        return "cjk"
    if script == "HANGUL":
        return "hangul"
    return script.lower() or "other"


def script_counts(text: str) -> Counter[str]:
    """Weighted letter counts per script group of ``text`` (see the module docstring)."""
    counts: Counter[str] = Counter()
    for ch in text:
        if not ch.isalpha():
            continue
        group = _group(_script(ch))
        counts[group] += IDEOGRAPH_WEIGHT if group in ("cjk", "hangul") else 1
    return counts


def _argmax(counts: Counter[str], order: tuple[str, ...]) -> str:
    rank = {name: i for i, name in enumerate(order)}
    return min(counts, key=lambda k: (-counts[k], rank.get(k, len(order)), k))


def detect_language(text: str) -> str:
    """A language or script label for ``text``; never raises.

    Returns ``"none"`` (no letters), an ISO 639-1 code (``en``, ``es``, ``fr``, ``de``, ``pt``,
    ``it``, ``nl``, ``zh``, ``ja``, ``ko``), ``"latin"`` (Latin script without a known stopword)
    or a lowercase Unicode script name (``cyrillic``, ``arabic``, ``greek``, ``devanagari``, ...).
    """
    counts = script_counts(text)
    if not counts:
        return "none"
    group = _argmax(counts, GROUP_ORDER)
    if group == "cjk":
        return "ja" if any(_script(ch) in _KANA for ch in text if ch.isalpha()) else "zh"
    if group == "hangul":
        return "ko"
    if group != "latin":
        return group
    hits: Counter[str] = Counter()
    for word in _WORD.findall(text.casefold()):
        for lang, words in STOPWORDS.items():
            if word in words:
                hits[lang] += 1
    return _argmax(hits, LATIN_ORDER) if hits else "latin"


def is_non_english(text: str) -> bool:
    """True when :func:`detect_language` gives anything but English, Latin-without-cue or no letters."""
    return detect_language(text) not in ENGLISH_LIKE


def non_english_share(texts: Iterable[str]) -> tuple[float, int]:
    """``(share, n)``: the fraction of the ``n`` texts with letters that are non-English (0.0 if none)."""
    n = non_english = 0
    for text in texts:
        label = detect_language(text)
        if label == "none":
            continue
        n += 1
        non_english += label not in ENGLISH_LIKE
    return (non_english / n if n else 0.0), n
