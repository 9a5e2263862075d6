"""One validator for what users write: the config file, declared definitions, admin API bodies.

A ``Checks`` reads values field by field. Each problem is about one key (a path such as
``("keys", "vk", "rpm")``, shown dotted: ``keys.vk.rpm``) and is either collected or raised:

* ``Checks(file)`` collects every problem as a ``file: dotted.key: problem`` line
  (``llmgw config validate``, and ``serve`` / ``config apply`` refusing a file with the whole list);
* ``Checks()`` raises at the first one, as ``error`` (``UsageError`` by default; the admin API uses
  ``InvalidRequest``) with the key as ``param`` and a ``code``: ``invalid_type``, ``invalid_value``,
  ``missing_field`` or ``unknown_field``.

Invariants: every message is ``key: problem``, so ``LlmgwError.about`` can name the key the way a
front end does (``--period`` on the command line). A getter that finds a problem reports it and
returns the default, so a collecting reader goes on to the next field. A value that is absent
(or JSON ``null``) takes the default.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import LlmgwError, UsageError
from .tomltext import dotted, show

if TYPE_CHECKING:  # PEP 696: a getter called without a default returns ``X | None``
    from typing_extensions import TypeVar as TypeVarWithDefault

    D = TypeVarWithDefault("D", default=None)
T = TypeVar("T")
Key = str | int


class Checks:
    def __init__(self, file: str | None = None, *, error: type[LlmgwError] = UsageError) -> None:
        self.file = file  # None: raise at the first problem
        self.error = error
        self.problems: list[str] = []

    def add(self, at: str | tuple[Key, ...], problem: str, code: str = "invalid_value") -> None:
        key = at if isinstance(at, str) else dotted(*at)
        if self.file is None:
            raise self.error(f"{key}: {problem}" if key else problem, param=key or None, code=code)
        self.problems.append(f"{self.file}: {key}: {problem}" if key else f"{self.file}: {problem}")

    def _get(self, t: Mapping[str, Any], name: str, at: tuple[Key, ...], required: bool) -> Any:
        value = t.get(name)
        if value is None and required:
            self.add((*at, name), "required", "missing_field")
        return value

    def _type(self, at: tuple[Key, ...], expected: str, value: object) -> None:
        self.add(at, f"expected {expected}, got {show(value)}", "invalid_type")

    # -- tables ------------------------------------------------------------------------------------

    def table(self, value: object, *at: Key) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self._type(at, "a table", value)
        return None

    def unknown(self, t: Mapping[str, Any], allowed: tuple[str, ...], *at: Key, what: str = "key",
                explain: Mapping[str, str] | None = None) -> None:
        """A problem for each key of ``t`` not in ``allowed`` (``explain``: a reason for some names)."""
        for name in t:
            if name in allowed:
                continue
            if explain and name in explain:
                self.add((*at, name), explain[name], "unknown_field")
                continue
            hint = difflib.get_close_matches(name, allowed, n=1)
            more = f'; did you mean "{hint[0]}"?' if hint else f" (known: {', '.join(allowed) or 'none'})"
            self.add((*at, name), f"unknown {what}{more}", "unknown_field")

    # -- typed values --------------------------------------------------------------------------------

    def string(self, t: Mapping[str, Any], name: str, *at: Key, required: bool = False, nonempty: bool = True,
               default: D = None) -> str | D:  # type: ignore[assignment]
        value = self._get(t, name, at, required)
        if value is None:
            return default
        if not isinstance(value, str):
            self._type((*at, name), "a string", value)
        elif nonempty and not value.strip():
            self.add((*at, name), "must not be empty")
        else:
            return value
        return default

    def choice(self, t: Mapping[str, Any], name: str, options: tuple[str, ...], *at: Key, required: bool = False,
               default: D = None) -> str | D:  # type: ignore[assignment]
        value = self._get(t, name, at, required)
        if value is None:
            return default
        if value not in options:
            self.add((*at, name), f"expected one of {', '.join(map(show, options))}, got {show(value)}")
            return default
        return str(value)

    def boolean(self, t: Mapping[str, Any], name: str, *at: Key, default: D = None) -> bool | D:  # type: ignore[assignment]
        value = t.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._type((*at, name), "true or false", value)
            return default
        return value

    def integer(self, t: Mapping[str, Any], name: str, *at: Key, lo: int | None = None, hi: int | None = None,
                default: D = None) -> int | D:  # type: ignore[assignment]
        value = t.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._type((*at, name), "an integer", value)
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = (f"at least {lo}" if hi is None else f"at most {hi}" if lo is None
                    else f"between {lo} and {hi}")
            self.add((*at, name), f"must be {span}, got {value}")
            return default
        return value

    def number(self, t: Mapping[str, Any], name: str, *at: Key, positive: bool = False, hi: float | None = None,
               default: D = None) -> float | D:  # type: ignore[assignment]
        """A finite float (integers accepted), >= 0 (``positive``: > 0), at most ``hi``."""
        value = t.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._type((*at, name), "a number", value)
            return default
        number = float(value)
        if not math.isfinite(number):
            self._type((*at, name), "a finite number", value)
        elif positive and number <= 0:
            self.add((*at, name), f"must be greater than 0, got {show(value)}")
        elif number < 0:
            self.add((*at, name), f"must not be negative, got {show(value)}")
        elif hi is not None and number > hi:
            self.add((*at, name), f"must be at most {hi:g}, got {show(value)}")
        else:
            return number
        return default

    def strings(self, t: Mapping[str, Any], name: str, *at: Key, what: str = "string",
                default: D = None) -> list[str] | D:  # type: ignore[assignment]
        """An array of non-empty strings; each bad item is a problem of its own (``name[i]``)."""
        value = t.get(name)
        if value is None:
            return default
        if not isinstance(value, list):
            self._type((*at, name), f"an array of {what}s", value)
            return default
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self._type((*at, name, i), f"a {what}", item)
            else:
                out.append(item)
        return out if len(out) == len(value) else default

    def parsed(self, t: Mapping[str, Any], name: str, parse: Callable[[Any], T], *at: Key, default: D = None,  # type: ignore[assignment]
               required: bool = False) -> T | D:
        """``parse(value)``; the reason of its ``ValueError`` or ``UsageError`` is this key's problem."""
        value = self._get(t, name, at, required)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError as e:
            self.add((*at, name), str(e))
        except UsageError as e:
            self.add((*at, name), e.message)
        return default
