"""Tables for people and for machines: one renderer behind every listing command.

``emit(columns, rows, fmt)`` prints ``rows`` as a table that fits the terminal, or as JSON, CSV or
TSV. The rules (the same for every command):

* A table never cuts an id or an amount of money: such columns (``keep=True``) are printed whole,
  never wrapped or clipped. When the table is wider than the terminal, text columns wrap first
  (down to a minimum width), then columns are dropped in ``drop`` order (highest first) until it
  fits; stderr names the columns left out (stdout stays data). Columns with ``drop=0`` are never
  dropped: if they alone are wider than the terminal, the line is longer than the terminal.
* The width is ``$COLUMNS`` if set, else the terminal's; output that is not a terminal (a pipe, a
  file) is never narrowed.
* ``csv`` and ``tsv`` have every column, in machine form (``Column.raw``: exact decimals for money,
  ISO-8601 UTC times); TSV replaces tabs and newlines inside a value with spaces (it has no quoting).
  ``json`` prints the rows the command hands over, whole.

Kept free of Rich and Textual: plain text, so it is fast to import and easy to test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, TextIO

import typer

SEP = "  "
MIN_WRAP = 10  # a wrapped column keeps at least this many cells (or its header's width)


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    tsv = "tsv"


FormatOpt = Annotated[
    Format | None,
    typer.Option("--format", help="table (fits the terminal; ids and money never cut) for people; json, csv or tsv "
                                  "(every column, exact) for machines."),
]


def pick_format(fmt: Format | None, json_flag: bool) -> Format:
    """``--json`` is short for ``--format json``; giving both with different formats is a usage error."""
    if json_flag:
        if fmt not in (None, Format.json):
            from ..errors import UsageError

            raise UsageError(f"--json and --format {fmt.value} contradict each other (--json is --format json)")
        return Format.json
    return fmt or Format.table


@dataclass(frozen=True, slots=True)
class Column:
    """One column: ``cell`` is the text a person reads, ``raw`` what csv/tsv carry (default: ``cell``).

    ``keep``: never wrapped or clipped (ids, money, times). ``drop``: 0 never dropped; otherwise the
    order in which columns go when the terminal is too narrow (highest first).
    """

    header: str
    cell: Callable[[Any], str]
    raw: Callable[[Any], Any] | None = None
    keep: bool = False
    drop: int = 0
    right: bool = False  # right-aligned (numbers, money)
    key: str = ""  # the csv/tsv header (default: the header, spaces as _)

    @property
    def machine_header(self) -> str:
        return self.key or self.header.replace(" ", "_")


def terminal_width(out: TextIO | None = None) -> int | None:
    """``$COLUMNS``, else the terminal's width; None (no limit) when the output is not a terminal."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    stream = out or sys.stdout
    try:
        if stream.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, OSError):
        pass
    return None


def layout(columns: Sequence[Column], cells: list[list[str]], width: int | None) -> tuple[list[int], list[int]]:
    """Which columns to show (indices) and their widths, so the table fits ``width``."""
    natural = [max([len(c.header)] + [len(line) for row in cells for line in row[i].splitlines() or [""]])
               for i, c in enumerate(columns)]
    # words are never split (an id inside a text column stays whole): a column wraps at spaces only
    longest_word = [max([0] + [len(w) for row in cells for w in row[i].split()]) for i in range(len(columns))]
    shown = list(range(len(columns)))

    def fit(idx: list[int]) -> list[int] | None:
        widths = {i: natural[i] for i in idx}
        total = sum(widths.values()) + len(SEP) * (len(idx) - 1)
        if width is None or total <= width:
            return [widths[i] for i in idx]
        # wrap text columns, widest first, down to their minimum
        wrappable = [i for i in idx if not columns[i].keep]
        floor = {i: min(natural[i], max(MIN_WRAP, len(columns[i].header), longest_word[i])) for i in wrappable}
        while total > width:
            candidates = [i for i in wrappable if widths[i] > floor[i]]
            if not candidates:
                return None
            i = max(candidates, key=lambda j: widths[j] - floor[j])
            step = min(total - width, widths[i] - floor[i])
            widths[i] -= step
            total -= step
        return [widths[i] for i in idx]

    while True:
        got = fit(shown)
        if got is not None:
            return shown, got
        droppable = [i for i in shown if columns[i].drop > 0]
        if not droppable:
            return shown, [natural[i] for i in shown]  # too wide even so: never cut, let lines run long
        shown.remove(max(droppable, key=lambda i: (columns[i].drop, i)))


def render(columns: Sequence[Column], rows: Iterable[Any], width: int | None, *,
           total: bool = False) -> tuple[str, list[str]]:
    """The table's text (ending in a newline) and the headers of the columns left out; ``total``: the
    last row is a total, ruled off from the others."""
    rows = list(rows)
    cells = [[_one_line(c.cell(r)) for c in columns] for r in rows]
    shown, widths = layout(columns, cells, width)
    lines = []

    def line(parts: list[str]) -> str:
        return SEP.join(parts).rstrip()

    lines.append(line([_pad(columns[i].header, w, columns[i].right) for i, w in zip(shown, widths, strict=True)]))
    lines.append(line(["─" * w for w in widths]))
    for n, row in enumerate(cells):
        if total and n == len(cells) - 1 and n > 0:
            lines.append(line(["─" * w for w in widths]))
        wrapped = []
        for i, w in zip(shown, widths, strict=True):
            text = row[i]
            if columns[i].keep or len(text) <= w:
                wrapped.append([text])
            else:
                wrapped.append(textwrap.wrap(text, w, break_long_words=False, break_on_hyphens=False) or [""])
        for k in range(max(len(parts) for parts in wrapped)):
            lines.append(line([_pad(parts[k] if k < len(parts) else "", w, columns[i].right)
                               for parts, i, w in zip(wrapped, shown, widths, strict=True)]))
    dropped = [columns[i].header for i in range(len(columns)) if i not in shown]
    return "\n".join(lines) + "\n", dropped


def _pad(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) if ("\n" in text or "\t" in text) else str(text)


def machine(columns: Sequence[Column], rows: Iterable[Any], delimiter: str) -> str:
    """CSV (``,``) or TSV (tab) text with a header row: every column, raw values."""
    buf = io.StringIO()
    if delimiter == "\t":
        def clean(v: Any) -> str:
            return "" if v is None else " ".join(str(v).replace("\t", " ").splitlines())

        buf.write("\t".join(c.machine_header for c in columns) + "\n")
        for r in rows:
            buf.write("\t".join(clean((c.raw or c.cell)(r)) for c in columns) + "\n")
        return buf.getvalue()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c.machine_header for c in columns])
    for r in rows:
        w.writerow(["" if (v := (c.raw or c.cell)(r)) is None else v for c in columns])
    return buf.getvalue()


def emit(columns: Sequence[Column], rows: Sequence[Any], fmt: Format, *, json_rows: Any = None,
         out: TextIO | None = None, machine_columns: Sequence[Column] | None = None, total: bool = False) -> None:
    """Print ``rows`` in ``fmt`` on stdout (``json_rows``: what ``json`` prints, default ``rows``;
    ``machine_columns``: csv/tsv columns when they differ from the table's)."""
    out = out or sys.stdout
    if fmt in (Format.csv, Format.tsv) and machine_columns is not None:
        columns = machine_columns
    if fmt is Format.json:
        out.write(json.dumps(rows if json_rows is None else json_rows, indent=2, default=str) + "\n")
    elif fmt is Format.csv:
        out.write(machine(columns, rows, ","))
    elif fmt is Format.tsv:
        out.write(machine(columns, rows, "\t"))
    else:
        text, dropped = render(columns, rows, terminal_width(out), total=total)
        out.write(text)
        if dropped:
            out.flush()
            sys.stderr.write(f"({len(dropped)} column{'s' if len(dropped) != 1 else ''} left out to fit the terminal: "
                             f"{', '.join(dropped)}; a wider terminal or --format tsv shows every column)\n")


# ---- key: value output ----------------------------------------------------------------------------


def readable(key: str, value: Any) -> tuple[str, str]:
    """A field as a person reads it: ``*_nanos`` → ``saved: $0.00015`` (``units.usd``, exact),
    ``*_ms`` epoch times → ``oldest: 2026-11-27T10:00:00Z`` (``units.iso_utc``); others as they are."""
    from ..units import iso_utc, usd

    if isinstance(value, int) and not isinstance(value, bool):
        if key.endswith("_nanos"):
            return key.removesuffix("_nanos"), usd(value)
        if key.endswith("_ms") and value > 10**11:  # an epoch instant, not a duration
            return key.removesuffix("_ms"), iso_utc(value)
    if value is None:
        return key.removesuffix("_nanos").removesuffix("_ms"), "-"
    return key, str(value)


def print_fields(fields: dict[str, Any], out: TextIO | None = None) -> None:
    """``key: value`` lines with ``readable`` values (lists and dicts are skipped: print them yourself)."""
    out = out or sys.stdout
    for k, v in fields.items():
        if isinstance(v, list | dict):
            continue
        name, text = readable(k, v)
        out.write(f"{name}: {text}\n")
