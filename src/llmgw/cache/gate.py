"""Instruction gate: two prompts that ask for something different never share a cached answer.

The embedding is a mean of token vectors: one word of a closed class changes the instruction and
hardly moves the vector ("caption" vs "caption in French" 0.97, "with" vs "without cushions" 0.993,
"move 3 units to warehouse 7" vs "7 ... 3" 1.000). The field guard (``guard.py``) compares facts
written as fields and numbers; the gate compares the *instruction words*. It is a pairwise check
applied to each semantic candidate: ``conflict(features(a), features(b), classes)`` returns the
first class in which the two prompts differ, or ``None`` (the hit may go ahead).

Classes (``CLASSES``; each can be switched off with ``[cache] gate_classes``):

* ``negation``: whether there is a negation (``not``, ``no``, ``never``, ``without``, ``don't``,
  ``non-``...);
* ``numbers``: the multiset of numbers, number words as digits;
* ``languages``: language names in order (``from English to French`` is not ``from French to
  English``);
* ``formats``: output formats and genres (JSON, table, bullet points, caption, alt text, email...);
* ``directions``: left/right, up/down, north/south, ascending/descending...;
* ``polar``: polar adjectives, comparatives and verbs (long/short, longer/shorter, formal/casual,
  add/remove, increase/decrease, more/less...);
* ``channels``: Instagram, LinkedIn, TikTok, email, SMS...;
* ``suffixes``: product-name suffixes written capitalised (``Pro``, ``Max``, ``Plus``, ``Mini``,
  ``Ultra``, ``SE``...);
* ``order``: the numbers and names (capitalised words that do not start a sentence, words with an
  inner capital) the two prompts share must appear in the same relative order.

Word lists are sets (a repeated word counts once) except negation (a count) and languages and order
(sequences). Deterministic, pure Python, no heavy imports; about 15 µs per prompt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..config import GATE_CLASSES
from .guard import NUMBER_WORDS

CLASSES = GATE_CLASSES  # one list: the config validates ``[cache] gate_classes`` against it

_NEGATIONS = frozenset({"not", "no", "never", "without", "none", "nor", "neither", "cannot", "nothing",
                        "nobody", "nowhere", "w/o"})
_LANGUAGES = frozenset("""english french spanish german italian portuguese dutch chinese mandarin cantonese
japanese korean arabic hindi russian polish turkish swedish norwegian danish finnish greek hebrew thai
vietnamese indonesian malay czech slovak hungarian romanian ukrainian bengali urdu persian farsi tamil
telugu latin swahili tagalog filipino catalan basque croatian serbian bulgarian icelandic irish welsh""".split())
_FORMATS = frozenset("""json yaml xml csv tsv markdown html latex table list bullet bullets numbered paragraph
paragraphs sentence sentences essay email letter tweet haiku poem limerick sonnet song summary outline
caption captions headline headlines title titles tagline slogan description descriptions code sql python
javascript typescript regex story memo faq quiz recipe abstract bio biography
transcript diagram checklist""".split())
_FORMAT_PHRASES = (("alt", "text"), ("bullet", "point"), ("bullet", "points"), ("blog", "post"),
                   ("cover", "letter"), ("press", "release"), ("meta", "description"), ("one", "liner"),
                   ("step", "by", "step"))
# antonym pairs: a pole of a pair in one prompt and the other pole in the other is a conflict
_DIRECTION_PAIRS = ("left right", "north south", "east west", "northeast southwest", "northwest southeast",
                    "above below", "upward downward", "upwards downwards", "forward backward",
                    "forwards backwards", "clockwise counterclockwise", "clockwise anticlockwise",
                    "ascending descending", "horizontal vertical", "horizontally vertically", "inbound outbound",
                    "uphill downhill", "top bottom", "upstairs downstairs")
_POLAR_PAIRS = ("long short", "longer shorter", "longest shortest", "brief detailed", "concise verbose",
                "concise detailed", "formal informal", "formal casual", "serious funny", "serious playful",
                "positive negative", "high low", "higher lower", "highest lowest", "big small", "bigger smaller",
                "biggest smallest", "large small", "larger smaller", "largest smallest", "cheap expensive",
                "cheaper pricier", "fast slow", "faster slower", "fastest slowest", "hot cold", "warm cool",
                "warmer cooler", "easy hard", "easy difficult", "easier harder", "simple complex",
                "simpler complex", "best worst", "better worse", "good bad", "min max", "minimum maximum",
                "increase decrease", "increase reduce", "raise lower", "add remove", "include exclude",
                "old new", "older newer", "oldest newest", "first last", "early late", "earlier later",
                "strong weak", "light dark", "lighter darker", "open close", "start stop", "enable disable",
                "allow deny", "accept reject", "buy sell", "import export", "uppercase lowercase", "more less",
                "more fewer", "most least", "many few", "before after", "plural singular", "past future",
                "present past", "male female", "men women", "summer winter", "spring autumn", "day night",
                "morning evening", "inside outside", "indoor outdoor", "wet dry", "thick thin", "heavy light",
                "loud quiet", "happy sad", "optimistic pessimistic", "pros cons", "advantages disadvantages",
                "true false", "agree disagree", "likes dislikes", "minimum maximum", "ascending descending")
_CHANNELS = frozenset("""instagram linkedin twitter facebook tiktok youtube pinterest reddit snapchat whatsapp
telegram slack discord email sms newsletter mastodon wechat threads bluesky""".split())
_SUFFIXES = frozenset({"Pro", "Max", "Plus", "Mini", "Ultra", "Lite", "Air", "SE", "XL", "XXL", "XS", "Neo",
                       "FE", "PRO", "MAX", "PLUS", "MINI", "ULTRA", "LITE", "AIR"})


def _poles(pairs: Iterable[str]) -> dict[str, tuple[tuple[int, int], ...]]:
    """word -> its (pair, pole) in every antonym pair it belongs to"""
    out: dict[str, tuple[tuple[int, int], ...]] = {}
    for n, pair in enumerate(pairs):
        a, b = pair.split()
        out[a] = (*out.get(a, ()), (n, 0))
        out[b] = (*out.get(b, ()), (n, 1))
    return out


_DIRECTIONS = _poles(_DIRECTION_PAIRS)
_POLAR = _poles(_POLAR_PAIRS)
_ORDER_WINDOW = 6  # words: two shared numbers or names this close must keep their order

_WORD = re.compile(r"[A-Za-z][A-Za-z']*(?:-[A-Za-z]+)*|\d+(?:[.,]\d+)*(?:st|nd|rd|th)?|[.!?\n:;]")
_SENTENCE_END = frozenset(".!?\n:;")


@dataclass(frozen=True, slots=True)
class Features:
    """What the gate compares, per class (see the module docstring)."""

    negation: bool = False
    numbers: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    directions: frozenset[tuple[int, int]] = frozenset()
    polar: frozenset[tuple[int, int]] = frozenset()
    channels: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    order: tuple[tuple[str, int], ...] = ()  # (number or name, word position)


def _num(tok: str) -> str:
    t = tok.replace(",", "")
    t = re.sub(r"(st|nd|rd|th)$", "", t)
    if "." in t:
        t = t.rstrip("0").rstrip(".")
    return t


def features(text: str) -> Features:
    """The gate features of ``text``."""
    toks = _WORD.findall(text)
    negation = False
    numbers: list[str] = []
    languages: list[str] = []
    formats: set[str] = set()
    directions: set[tuple[int, int]] = set()
    polar: set[tuple[int, int]] = set()
    channels: set[str] = set()
    suffixes: set[str] = set()
    order: list[tuple[str, int]] = []
    start = True  # at the start of a sentence
    lowered = [t.lower() for t in toks]
    n = len(toks)
    for i, tok in enumerate(toks):
        if tok in _SENTENCE_END:
            start = True
            continue
        low = lowered[i]
        if low.endswith("n't") or low in _NEGATIONS or low.startswith(("non-", "no-")):
            negation = True
        if tok[0].isdigit():
            v = _num(tok)
            numbers.append(v)
            order.append((v, i))
        elif low in NUMBER_WORDS:
            v = str(NUMBER_WORDS[low])
            numbers.append(v)
            order.append((v, i))
        if low in _LANGUAGES:
            if not languages or languages[-1] != low:
                languages.append(low)
        if low in _FORMATS:
            formats.add(low.rstrip("s") if low not in ("steps",) else low)
        if low in _DIRECTIONS:
            directions.update(_DIRECTIONS[low])
        if low in _POLAR:
            polar.update(_POLAR[low])
        if low in _CHANNELS:
            channels.add(low)
        if tok in _SUFFIXES and i > 0 and not start:
            suffixes.add(tok.lower())
        if tok[0].isalpha() and (any(c.isupper() for c in tok[1:]) or (tok[0].isupper() and not start)) \
                and low not in ("i", "i'm", "i'd", "i'll", "i've"):
            order.append((low, i))
        start = False
    for phrase in _FORMAT_PHRASES:
        k = len(phrase)
        if any(tuple(lowered[i:i + k]) == phrase for i in range(n - k + 1)):
            formats.add(" ".join(phrase))
    return Features(negation, tuple(sorted(numbers)), tuple(languages), tuple(sorted(formats)),
                    frozenset(directions), frozenset(polar), tuple(sorted(channels)),
                    tuple(sorted(suffixes)), tuple(order))


def _order_conflict(a: Sequence[tuple[str, int]], b: Sequence[tuple[str, int]]) -> bool:
    """Two numbers or names close together in both prompts appear in opposite orders."""
    pa: dict[str, int] = {}
    pb: dict[str, int] = {}
    for x, i in a:
        pa.setdefault(x, i)
    for x, i in b:
        pb.setdefault(x, i)
    common = [x for x in pa if x in pb]
    for n, x in enumerate(common):
        for y in common[n + 1:]:
            da, db = pa[y] - pa[x], pb[y] - pb[x]
            if abs(da) <= _ORDER_WINDOW and abs(db) <= _ORDER_WINDOW and (da > 0) != (db > 0):
                return True
    return False


def _swapped(a: frozenset[tuple[int, int]], b: frozenset[tuple[int, int]]) -> bool:
    """One prompt has a pole of an antonym pair that the other has only the opposite pole of."""
    if not a or not b:
        return False
    pairs_a = {p for p, _ in a}
    return any(p in pairs_a and (p, pole) not in a for p, pole in b) or \
        any((p, 1 - pole) in b and (p, pole) not in b for p, pole in a)


def conflict(a: Features, b: Features, classes: Iterable[str] = CLASSES) -> str | None:
    """The first class (in ``classes`` order) in which ``a`` and ``b`` differ, or ``None``.

    negation, numbers, languages, channels, suffixes: any difference; formats: both name a format
    and not the same ones; directions, polar: an antonym swapped (``longer`` vs ``shorter``, not
    ``longer`` vs nothing); order: see ``_order_conflict``."""
    for cls in classes:
        if cls == "order":
            if _order_conflict(a.order, b.order):
                return cls
        elif cls in ("directions", "polar"):
            if _swapped(getattr(a, cls), getattr(b, cls)):
                return cls
        elif cls == "formats":
            if a.formats and b.formats and a.formats != b.formats:
                return cls
        elif getattr(a, cls) != getattr(b, cls):
            return cls
    return None


def check_classes(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple in ``CLASSES`` order; ``ValueError`` names an unknown class."""
    wanted = list(names)
    unknown = [n for n in wanted if n not in CLASSES]
    if unknown:
        raise ValueError(f"unknown gate class {unknown[0]!r} (known: {', '.join(CLASSES)})")
    return tuple(c for c in CLASSES if c in wanted)
