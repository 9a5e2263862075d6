"""Field guard: the structured facts of a prompt, which must be equal for a semantic cache hit.

The semantic layer decides whether two prompts *mean* the same; it cannot be trusted with facts
(``brand: null`` vs ``brand: Nike``, SKU 10482 vs 10483 embed almost identically). The guard
extracts those facts, normalised, and a semantic hit is allowed only when the two fact sets are
exactly equal, i.e. when their ``fingerprint`` strings are equal (the fingerprint is stored with a
cache entry and used as an exact partition).

A fact is a ``(kind, value)`` pair of strings; the facts of a prompt are a ``frozenset`` of them:

* fields: ``key: value`` / ``key=value`` pairs and JSON object fields -> ``(key, value)``. Keys are
  case-folded and trimmed; JSON objects anywhere in the text are parsed and flattened to dotted
  paths (``{"a": {"b": [1]}}`` -> ``("a.b.0", "1")``), so ``{"brand": "Nike"}`` and ``brand: Nike``
  give the same fact. Numbers, ids and quotes inside a field are not facts of their own (so
  ``sku: 10,482`` and ``{"sku": 10482}`` agree). Several pairs may share a line (``brand: Nike, sku: 10482``); a value ends at
  a newline, at ``;``/``|``, at a comma followed by a space, at a sentence end
  (``. ``), or where the next ``key:`` starts.
* null: ``null``, ``none``, ``nil``, ``n/a``, ``na``, ``undefined``, ``-``, ``""`` and an empty
  value all become the marker ``NULL``, which no real value can equal.
* ``("#num", n)``: standalone numbers; thousands commas dropped (``10,482`` == ``10482``), decimal
  trailing zeros dropped (``10.50`` == ``10.5``), leading zeros kept (postcodes), a currency sign or
  ``%`` kept (``$10`` != ``10``).
* ``("#id", x)``: tokens mixing digits with letters or joined by ``-``/``_``/``.``/``/``
  (``SKU-10482``, ``AB12-34``, ``ORD_99812``, ``2024-01-05``, ``gpt-4o``); numbers inside them are
  not counted again.
* ``("#quote", s)``: text in ``"..."``, ``'...'`` (at word boundaries, so apostrophes are not
  quotes), ``“...”``, ``‘...’``, ``«...»``; the quote style does not matter.
* ``("#time", t)``: ``10:30``, ``9:05:00 pm``. A key must start with a letter, so a time is never a
  key: value pair.
* ``("#url", u)``: ``scheme://...`` URLs, whole (trailing punctuation stripped); their ``https:``
  is not a key and their query parameters are not fields.
* ``("#x:<name>", match)``: each match of a configured extra pattern (``name`` is the mapping key,
  or the index in a sequence). Matched text is only whitespace-collapsed, never case-folded.

Invariants:

* Deterministic and order-free: same text -> same facts in any process; the fingerprint is a
  BLAKE2 digest of the sorted facts (never ``hash()``, which is salted per process).
* Insensitive to harmless differences: whitespace, prose word order, trailing punctuation, and
  letter case of values (``Nike`` == ``nike``: all values except extra-pattern matches are
  case-folded). A multiset is not kept: a number repeated twice is one fact.
* Conservative: anything that looks like a fact and differs blocks the hit. Free text after a colon
  (``Note: keep it short``) is a field too, so rephrasing it costs a hit, never a wrong answer.
* Pure Python (``re``, ``json``), no heavy imports. Measured about 110 µs per prompt of 200-260
  characters (prose + key: value lines + a JSON object), on this machine; the key: value scan with
  its look-aheads is most of it.

Not caught: facts written only in words (``size ten`` vs ``size eleven``, ``Nike`` vs ``Adidas`` in
prose), European number formats (``10.482,50``), and Python-literal dicts that are not JSON (their
``'key': value`` pairs are still read as fields, flat).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

Facts = frozenset[tuple[str, str]]
ExtraPatterns = Sequence[str] | Mapping[str, str]

NULL = "\x00null"
_NULL_WORDS = frozenset({"", "null", "none", "nil", "n/a", "na", "undefined", "-", "—", "–", "?"})

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s<>\"'“”‘’]+")
_KEY = r"[\"']?[A-Za-z_][\w.-]{0,63}[\"']?"
# a value runs to the end of its line, a ``;``/``|``, or where the next ``key:`` starts; ``_split_value``
# then keeps the list items and short sentences that belong to it and gives longer prose back
_KV_HEAD = re.compile(rf"(?<![\w.\-/?&#@])({_KEY})[ \t]*(?:=|:(?!//))[ \t]*")
_VALUE_END = re.compile(r"[\n;|]")
_NEXT_KEY = re.compile(rf"[,;.]?[ \t]*(?<![\w.\-/?&#@\"']){_KEY}[ \t]*(?:=|:(?!//))")
_QUOTE = re.compile(
    r"\"([^\"\n]{1,300})\"|(?<!\w)'([^'\n]{1,300})'(?!\w)|“([^”\n]{1,300})”|‘([^’\n]{1,300})’|«([^»\n]{1,300})»"
)
_TOKEN = re.compile(
    r"(?P<time>(?<![\w:.])\d{1,2}:\d{2}(?::\d{2})?(?:\s*[aApP]\.?[mM]\.?(?!\w))?(?![\w:]))"
    r"|(?P<num>(?<![\w.,])(?:[€£¥]\s?)?-?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?(?![\w,]|\.\d))"
    r"|(?P<id>(?<![\w.\-/])(?=[\w.\-/]*\d)[A-Za-z0-9]+(?:[-_./][A-Za-z0-9]+)+(?![\w%]|[-_./]\w))"
    r"|(?P<id2>(?<!\w)(?=[A-Za-z_]*\d)(?=\d*[A-Za-z_])\w+)"
    r"|(?P<num2>(?<![\w.])(?:[€£¥]\s?)?(?:(?<![\w-])-)?\d+(?:\.\d+)?%?(?!\w|\.\d))"
)
_DECIMAL = re.compile(r"\d+\.\d+")
_SPACES = re.compile(r"\s+")
_TRAIL = ".,;:!?)]}"

# ---- harmless formatting, normalised before anything is extracted ---------------------------------
_SMALL = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
NUMBER_WORDS: dict[str, int] = {w: i for i, w in enumerate(_SMALL)} | _TENS | {"hundred": 100, "dozen": 12}
del NUMBER_WORDS["one"]  # "one can", "at once", "the one with": a pronoun far more often than a count
_NUMBER_WORD = re.compile(
    r"(?<![\w-])(?:(" + "|".join(_TENS) + r")(?:[- ](one|two|three|four|five|six|seven|eight|nine))?"
    r"|(" + "|".join(w for w in NUMBER_WORDS if w not in _TENS) + r"))(?![\w-])", re.IGNORECASE)
_UNITS = ("kg|g|mg|lb|lbs|oz|cm|mm|m|km|in|ft|ml|l|gb|mb|tb|kb|w|kw|v|mah|hz|khz|mhz|ghz|px|pt|k|x")
_UNIT_GAP = re.compile(rf"(\d)[ \t]+(%|(?:{_UNITS})\b)", re.IGNORECASE)
# the same for ASCII text, where \d is [0-9]: a character set lets the regex engine skip ahead (~40 % faster)
_UNIT_GAP_ASCII = re.compile(rf"([0-9])[ \t]+(%|(?:{_UNITS})\b)", re.IGNORECASE)
_DIGIT_BLANK = re.compile(r"\d[ \t]")
_DOLLAR = re.compile(r"(?:US)?\$[ \t]?(?=\d)")
_EMPHASIS = re.compile(r"\*\*|__|`")
_LIST_MARKER = re.compile(r"^([ \t]*)\d{1,2}[.)][ \t]+", re.MULTILINE)  # "1. " in a numbered list
# v2.10.0 = 2.10.0; the lookbehind after the v, so the regex starts with a character set (3x faster)
_VERSION = re.compile(r"[vV](?<![\w.][vV])(?=\d+(?:\.\d+)+\b)")
_DASH_FIELD = re.compile(r"^([ \t]*(?:[-*•][ \t]+)?)([A-Za-z][\w]{0,63})[ \t]+[-–—][ \t]+(?=\S)", re.MULTILINE)
_SPELLING = {"grey": "gray", "colour": "color", "colours": "colors", "coloured": "colored", "centre": "center",
             "metre": "meter", "metres": "meters", "litre": "liter", "litres": "liters", "aluminium": "aluminum",
             "favourite": "favorite", "jewellery": "jewelry", "organisation": "organization",
             "catalogue": "catalog", "tyre": "tire", "tyres": "tires"}
_TRUE = frozenset({"yes", "true", "y", "on"})
_FALSE = frozenset({"no", "false", "off"})
_YAML_KEY_LINE = re.compile(rf"^([ \t]*)(?:[-*][ \t]+)?({_KEY})[ \t]*:[ \t]*([|>][-+]?)?[ \t]*$")
_YAML_ANY_KEY = re.compile(rf"^[ \t]*(?:[-*][ \t]+)?{_KEY}[ \t]*(?:=|:(?!//))")
_ITEM_SPLIT = re.compile(r",(?!\d)[ \t]*|[ \t]+(?:and|&)[ \t]+|[ \t]*&[ \t]*")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[ \t]+")
_HAS_DIGIT = re.compile(r"\d")
_HAS_ASCII_DIGIT = re.compile(r"[0-9]")
_LOWER_WORDS = re.compile(r"[a-z]+")
_NUMBERISH = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+\.\d+")
_SPACE_RUN = re.compile(r"\s\s|[\t\n\r\f\v]")
_MAX_ITEM_WORDS = 4  # a list item or a sentence of a value; longer pieces are prose again


def _number_word(m: re.Match[str]) -> str:
    if m.group(1):
        return str(_TENS[m.group(1).lower()] + (NUMBER_WORDS[m.group(2).lower()] if m.group(2) else 0))
    return str(NUMBER_WORDS[m.group(3).lower()])


def normalise_text(text: str) -> str:
    """Harmless formatting made equal: markdown emphasis, ``Key - value`` lines, multi-line YAML
    values, ``$89.99`` = ``89.99``, ``1.5 kg`` = ``1.5kg``, ``20 %`` = ``20%``, number words as digits,
    British spellings (``grey`` = ``gray``)."""
    # each pass only when its trigger is in the text: this runs on every request of a semantic cache
    if "*" in text or "_" in text or "`" in text:
        text = _EMPHASIS.sub("", text)
    digits = (_HAS_ASCII_DIGIT if text.isascii() else _HAS_DIGIT).search(text) is not None
    if digits:
        if "\n" in text or text.lstrip(" \t")[:1].isdigit():  # a list marker starts a line
            text = _LIST_MARKER.sub(r"\1", text)
        text = _VERSION.sub("", text)
    if " - " in text or "–" in text or "—" in text:
        text = _DASH_FIELD.sub(r"\1\2: ", text)
    if "\n" in text and ":" in text:
        text = _yaml_blocks(text)
    if "$" in text:
        text = _DOLLAR.sub("", text)
    words = set(_LOWER_WORDS.findall(text.lower()))
    if not words.isdisjoint(NUMBER_WORDS):
        text = _NUMBER_WORD.sub(_number_word, text)
        digits = True
    if digits and _DIGIT_BLANK.search(text) is not None:  # a digit, a blank: maybe "1.5 kg"
        text = (_UNIT_GAP_ASCII if text.isascii() else _UNIT_GAP).sub(r"\1\2", text)
    british = words.intersection(_SPELLING)
    if british:
        rx, repl = _spelling_rx(tuple(sorted(british)))
        text = rx.sub(repl, text)
    return text


def _american(m: re.Match[str]) -> str:
    return _SPELLING[m.group(1).lower()]


@lru_cache(maxsize=256)
def _spelling_rx(words: tuple[str, ...]) -> tuple[re.Pattern[str], Any]:
    """The spellings regex for just the words a text has (a 16-word alternation costs ~6 µs a text)
    and its replacement: for one word the American spelling itself, not a function per match."""
    return (re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE),
            _SPELLING[words[0]] if len(words) == 1 else _american)


def _yaml_blocks(text: str) -> str:
    """``key:`` (or ``key: |``) followed by more indented lines or ``- item`` lines: one line
    ``key: item, item`` (a block scalar's lines are joined with spaces). A ``key:`` whose indented
    lines are fields itself (a nested mapping) is dropped: its fields stand for it."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _YAML_KEY_LINE.match(lines[i])
        if m is None:
            out.append(lines[i])
            i += 1
            continue
        indent = len(m.group(1).expandtabs())
        j = i + 1
        block: list[str] = []
        while j < len(lines):
            line = lines[j]
            stripped = line.strip()
            if not stripped:
                j += 1
                continue
            ind = len(line) - len(line.lstrip())
            if ind > indent or (ind == indent and stripped.startswith(("- ", "* ")) and not m.group(3)):
                block.append(line)
                j += 1
                continue
            break
        if not block:
            out.append(lines[i])
            i += 1
            continue
        if any(_YAML_ANY_KEY.match(b) for b in block):
            out.extend(block)  # a nested mapping: its own fields
        elif m.group(3):
            out.append(f"{m.group(1)}{m.group(2)}: " + " ".join(b.strip() for b in block))
        else:
            items = [b.strip()[2:].strip() if b.strip().startswith(("- ", "* ")) else b.strip() for b in block]
            out.append(f"{m.group(1)}{m.group(2)}: " + ", ".join(items))
        i = j
    return "\n".join(out)


def _norm_number(s: str) -> str:
    s = s.replace(",", "").replace(" ", "")
    if "." in s:
        body = s.rstrip("%")
        body = body.rstrip("0").rstrip(".")
        s = body + ("%" if s.endswith("%") else "")
    return s


@lru_cache(maxsize=8192)  # values repeat across prompts (colours, materials, keys' values); each is pure
def _norm_scalar(v: str) -> str:
    if _SPACE_RUN.search(v):
        v = _SPACES.sub(" ", v)
    v = v.strip().rstrip(_TRAIL).strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        v = v[1:-1].strip()
    v = v.casefold()
    if v in _NULL_WORDS:
        return NULL
    if v in _TRUE:
        return "true"
    if v in _FALSE:
        return "false"
    if v[:1].isdigit() or v[:1] == "-":
        if _NUMBERISH.fullmatch(v):
            return _norm_number(v)
    return v


def _norm_value(v: str) -> str:
    """A field's value: list items (``a, b``, ``a and b``) and sentences in any order are one value."""
    if _SENTENCE_SPLIT.search(v) is None:  # one sentence: the general path below, without its lists
        p = _norm_scalar(v)
        if p == NULL:
            return NULL
        if _ITEM_SPLIT.search(p) is None:  # and one item
            return _norm_scalar(p)
    pieces = [p for p in (_norm_scalar(x) for x in _SENTENCE_SPLIT.split(v)) if p != NULL or len(v) < 3]
    items: list[str] = []
    for piece in pieces or [NULL]:
        parts = [_norm_scalar(x) for x in _ITEM_SPLIT.split(piece)] if piece != NULL else [NULL]
        items.extend(x for x in parts if x != NULL or len(parts) == 1)
    if len(items) <= 1:
        return items[0] if items else NULL
    return ", ".join(sorted(items))


def _split_value(raw: str) -> tuple[str, str]:
    """(the field's value, prose that follows it): the first piece (up to ``, `` or a sentence end)
    always belongs to the value, later pieces only while each is a short item (a list value, or
    ``Lightweight. Waterproof.``); from the first longer piece on it is prose again."""
    cut = _VALUE_CUT
    pos = 0
    m = cut.search(raw)
    if m is None:
        return raw, ""
    end = m.start()
    pos = m.end()
    while pos < len(raw):
        m = cut.search(raw, pos)
        piece_end = m.start() if m else len(raw)
        if len(raw[pos:piece_end].split()) > _MAX_ITEM_WORDS:
            return raw[:end], raw[end:]
        end = piece_end
        pos = m.end() if m else len(raw)
    return raw[:end], raw[end:]


_VALUE_CUT = re.compile(r",(?!\d)[ \t]+|(?<=[.!?])[ \t]+")
_FIELD_LEAD = re.compile(r"(?:^|[,;|(\[{])[ \t]*(?:[-*•][ \t]+)?$")  # what ``_field_lead`` decides
_KEY_MAX = 66  # characters of a key, its quotes included (``_KEY``)


def _kv_head(text: str, at: int) -> re.Match[str] | None:
    """``_KV_HEAD.search(text, at)``, without scanning the prose before a separator: a key holds no
    whitespace, ``:`` or ``=`` and is at most ``_KEY_MAX`` characters, so a match that uses the
    first separator at or after ``at`` starts after the last blank before that separator's key and
    no more than ``_KEY_MAX`` characters before it (none can start earlier); the search starts
    there and finds the same match (later separators' included) as one from ``at``."""
    colon = text.find(":", at)
    equals = text.find("=", at)
    j = colon if equals < 0 or 0 <= colon < equals else equals
    if j < 0:
        return None
    k = j
    while k > at and text[k - 1] in " \t":
        k -= 1
    lo = max(at, k - _KEY_MAX)
    start = max(lo, text.rfind(" ", lo, k) + 1, text.rfind("\t", lo, k) + 1, text.rfind("\n", lo, k) + 1)
    return _KV_HEAD.search(text, start)


_BULLETS = "-*•"
_LEADS = ",;|([{"


def _field_lead(s: str) -> bool:
    """``s`` ends in a field's lead: nothing, or one of ``,;|([{``, then blanks and optionally a list
    bullet followed by blanks (``_FIELD_LEAD``, without a regex that tries every position of ``s``)."""
    t = s.rstrip(" \t")
    if not t or t[-1] in _LEADS:
        return True
    if t[-1] in _BULLETS and len(t) < len(s):  # a bullet needs a blank after it
        u = t[:-1].rstrip(" \t")
        return not u or u[-1] in _LEADS
    return False


def _is_field(text: str, start: int, previous_end: int) -> bool:
    """A ``key:`` is a field at the start of a line (after a list bullet), after a separator
    (``,;|([{``), or right after the previous field; after prose words it is prose."""
    line_start = text.rfind("\n", 0, start) + 1
    before = text[max(line_start, previous_end if previous_end > line_start else line_start):start]
    if previous_end >= line_start and not before.strip(" \t,;|"):
        return True
    return _field_lead(text[line_start:start]) or (previous_end >= line_start and _field_lead(before))


@lru_cache(maxsize=4096)
def _norm_key(k: str) -> str:
    k = k.strip().strip("\"'").strip().casefold()
    return _SPELLING.get(k, k)


def _flatten(prefix: str, obj: object, out: list[tuple[str, str]]) -> None:
    """JSON fields by their leaf key (``{"product": {"brand": "Nike"}}`` is ``brand: Nike``); a list
    of scalars is one list value, like ``colors: black, white``."""
    if isinstance(obj, dict):
        if not obj and prefix:
            out.append((prefix, "{}"))
        for k, v in obj.items():
            _flatten(_norm_key(str(k)), v, out)
    elif isinstance(obj, list):
        if not obj:
            out.append((prefix, "[]"))
        elif all(not isinstance(v, dict | list) for v in obj):
            scalars: list[tuple[str, str]] = []
            for v in obj:
                _flatten(prefix, v, scalars)
            out.append((prefix, ", ".join(sorted(v for _, v in scalars)) if len(scalars) > 1 else scalars[0][1]))
        else:
            for v in obj:
                _flatten(prefix, v, out)
    elif obj is None:
        out.append((prefix, NULL))
    elif isinstance(obj, bool):
        out.append((prefix, "true" if obj else "false"))
    elif isinstance(obj, int | float):
        out.append((prefix, _norm_number(repr(obj) if isinstance(obj, float) else str(obj))))
    else:
        out.append((prefix, _norm_value(str(obj))))


_DECODER = json.JSONDecoder()


def _json_objects(text: str, out: list[tuple[str, str]]) -> str:
    """Add the fields of every JSON object in ``text``; return text with those objects blanked."""
    if "{" not in text:
        return text
    parts: list[str] = []
    pos = 0
    i = text.find("{")
    while i != -1:
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            _flatten("", obj, out)
            parts.append(text[pos:i])
            parts.append(" ")
            pos = end
        i = text.find("{", end)
    parts.append(text[pos:])
    return "".join(parts)


@lru_cache(maxsize=64)
def _compile_extra(items: tuple[tuple[str, str], ...]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((name, re.compile(p)) for name, p in items)


def _extra_items(extra_patterns: ExtraPatterns) -> tuple[tuple[str, str], ...]:
    if isinstance(extra_patterns, Mapping):
        return tuple((str(k), v) for k, v in extra_patterns.items())
    return tuple((str(i), p) for i, p in enumerate(extra_patterns))


def extract_facts(text: str, extra_patterns: ExtraPatterns = ()) -> Facts:
    """The normalised structured facts of ``text`` (see the module docstring for each kind)."""
    return frozenset(fact_list(text, extra_patterns))


def fact_list(text: str, extra_patterns: ExtraPatterns = ()) -> list[tuple[str, str]]:
    """The facts of ``text`` as a sorted list with repeats of a field kept (``step: a`` twice is
    not ``step: a`` once), plus ``("#order", ...)``: the order in which two or more distinct
    standalone numbers and ids appear (``move 3 units to warehouse 7`` is not ``7 ... 3``)."""
    out: list[tuple[str, str]] = []
    if extra_patterns:
        for name, rx in _compile_extra(_extra_items(extra_patterns)):
            for m in rx.finditer(text):
                out.append((f"#x:{name}", _SPACES.sub(" ", m.group(0)).strip()))
    text = normalise_text(text)
    urls: list[str] = []

    def _url(m: re.Match[str]) -> str:
        u = m.group(0).rstrip(_TRAIL)
        urls.append(u)
        out.append(("#url", u))
        return f"\ue000{len(urls) - 1}\ue001" + m.group(0)[len(u) :]

    if "://" in text:
        text = _URL.sub(_url, text)
    text = _json_objects(text, out)
    rest: list[str] = []
    pos = 0
    field_end = -1
    at = 0
    while (kv := _kv_head(text, at)) is not None:
        vstart = kv.end()
        end = _VALUE_END.search(text, vstart)
        vend = end.start() if end else len(text)
        # the next "key:" on the line ends this value (it needs a separator in the value)
        nxt = _NEXT_KEY.search(text, vstart, vend) if (text.find(":", vstart, vend) >= 0 or
                                                       text.find("=", vstart, vend) >= 0) else None
        if nxt is not None:
            vend = nxt.start()
        at = max(vend, kv.end())
        value, prose = _split_value(text[vstart:vend])
        if not _is_field(text, kv.start(), field_end) and (
                not value.strip() or value != value.split(",")[0] or len(value.split()) > 3):
            # after prose words only a short single value is a field ("... product brand: Nike"); "the
            # following structure:" or "Python objects: integers, floats, ..." are prose
            continue
        field_end = vend
        if "\ue000" in value:
            value = re.sub(r"\ue000(\d+)\ue001", lambda u: urls[int(u.group(1))], value)
        out.append((_norm_key(kv.group(1)), _norm_value(value)))
        rest.append(text[pos : kv.start()] + " " + prose + " ")
        pos = vend
    text = "".join(rest) + text[pos:]  # a fact inside a field counts once, as the field
    quoted = '"' in text or "'" in text or "“" in text or "‘" in text or "«" in text
    for m in (_QUOTE.finditer(text) if quoted else ()):
        q = next(g for g in m.groups() if g is not None)
        out.append(("#quote", _SPACES.sub(" ", q).strip()))  # codes in quotes keep their case
    sequence: list[str] = []
    scan = re.sub(r"\ue000\d+\ue001", " ", text) if urls else text
    for m in _tokens(scan):
        kind = m.lastgroup or ""
        tok = m.group(0)
        if kind == "time":
            fact = ("#time", _SPACES.sub("", tok).replace(".", "").casefold())
        elif kind.startswith("num") or _DECIMAL.fullmatch(tok):
            fact = ("#num", _norm_number(tok))
        else:
            fact = ("#id", tok.casefold())
        out.append(fact)
        if fact[1] not in sequence:
            sequence.append(fact[1])
    # fields: a multiset; standalone numbers, ids, quotes, urls, times and pattern matches: a set
    fields = sorted(f for f in out if not f[0].startswith("#"))
    tokens = sorted({f for f in out if f[0].startswith("#")})
    if len(sequence) >= 2:
        tokens.append(("#order", " ".join(sequence)))
    return fields + tokens
_CHUNK = re.compile(r"\S+")
_DIGIT_CHUNK = re.compile(r"(?<!\S)\S*\d\S*")  # a whitespace-separated chunk with a digit


def _tokens(text: str) -> Iterator[re.Match[str]]:
    """``_TOKEN.finditer(text)``, scanning only near digits: every token kind has a digit and no
    whitespace, except a time's ``am``/``pm`` (the next chunk) and a currency sign before it (the
    chunk before), so each whitespace-separated chunk with a digit is scanned together with its
    neighbours (merged where they touch). A window ends where its last chunk ends, so a lookahead
    there sees the end of the string where the whole text has whitespace: both pass every one of
    ``_TOKEN``'s negative lookaheads; lookbehinds see the whole text. Same matches, a fraction of
    the work on prose (a test compares it with the plain scan on many texts). The chunk before a
    digit's is found forwards in the reversed text."""
    if _HAS_DIGIT.search(text) is None:
        return
    rev = None
    n = len(text)
    start = end = -1
    for m in _DIGIT_CHUNK.finditer(text):
        a, b = m.span()
        if a <= end:  # the window so far reaches this chunk: its neighbour after it is all it adds
            ws = a
        else:
            if rev is None:
                rev = text[::-1]
            before = _CHUNK.search(rev, n - a)
            ws = n - before.end() if before is not None else a
        after = _CHUNK.search(text, b)
        we = after.end() if after is not None else b
        if ws <= end:
            if we > end:
                end = we
            continue
        if end >= 0:
            yield from _TOKEN.finditer(text, start, end)
        start, end = ws, we
    if end >= 0:
        yield from _TOKEN.finditer(text, start, end)


def fingerprint_facts(facts: Facts | Sequence[tuple[str, str]]) -> str:
    """A stable hex digest of a fact set (or ``fact_list``): equal iff equal (up to BLAKE2)."""
    h = hashlib.blake2b(digest_size=16)
    for kind, value in sorted(facts):
        h.update(kind.encode("utf-8", "surrogatepass") + b"\x1f")
        h.update(value.encode("utf-8", "surrogatepass") + b"\x1e")
    return h.hexdigest()


def fingerprint(text: str, extra_patterns: ExtraPatterns = ()) -> str:
    """``fingerprint_facts(fact_list(text))``: store it with a cache entry, compare exactly."""
    return fingerprint_facts(fact_list(text, extra_patterns))
