"""Configured secrets never leave the daemon: not in an answer, a log line, a metric or a traceback.

The daemon registers every secret it is configured with (``register(config, environ)``: provider
API keys, secret-looking provider header values and URL credentials, the admin and metrics tokens,
the webhook HMAC key) with the process-wide ``SECRETS``. From then on:

- every error a client receives is redacted where it is rendered (``server.http.error_response`` /
  ``error_event``, which upstream error bodies passed through also go through);
- every log record is redacted when it is made (``install_logging``: a log record factory, so it
  holds for every logger and handler, aiohttp's and the test runner's included), its traceback too,
  and so are the tracebacks of uncaught exceptions (``sys.excepthook``, ``threading.excepthook``);
- the ``/metrics`` scrape is redacted before it is sent.

A secret is replaced by ``[redacted]`` wherever it appears, also inside a longer string (an
upstream quoting ``Authorization: Bearer sk-...`` back). Secrets shorter than ``MIN_LENGTH``
characters are not registered: replacing every occurrence of a short string would mangle ordinary
text, and a secret that short is no secret (``llmgw doctor`` says so).

Successful answers are the model's output and are relayed unchanged (scanning every body would
cost on the hot path for a leak no provider produces); the registry only grows, so a secret rotated
out stays redacted until the process ends.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from .config import Config

MASK = "[redacted]"
MIN_LENGTH = 8
#: provider header names whose values are treated as secrets (any name containing one of these)
_SECRET_HEADER_WORDS = ("auth", "key", "token", "secret", "password", "cookie")


class Redactor:
    """A set of secrets and the compiled patterns that find them (text and bytes)."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._text: re.Pattern[str] | None = None
        self._bytes: re.Pattern[bytes] | None = None
        self._lock = threading.Lock()  # daemons in threads (tests) register concurrently

    def add(self, secrets: Iterable[str | bytes | None]) -> None:
        new = set()
        for s in secrets:
            if isinstance(s, bytes):
                s = s.decode("utf-8", "replace")
            if s and len(s.strip()) >= MIN_LENGTH:
                new.add(s.strip())
        with self._lock:
            if new <= self._secrets:
                return
            self._secrets |= new
            ordered = sorted(self._secrets, key=len, reverse=True)  # the longest first: no partial masks
            self._text = re.compile("|".join(map(re.escape, ordered)))
            self._bytes = re.compile(b"|".join(re.escape(s.encode("utf-8")) for s in ordered))

    def __bool__(self) -> bool:
        return self._text is not None

    def text(self, s: str) -> str:
        p = self._text
        return s if p is None or not s else p.sub(MASK, s)

    def bytes(self, b: bytes) -> bytes:
        p = self._bytes
        return b if p is None or not b else p.sub(MASK.encode(), b)

    def clear(self) -> None:
        """Forget every secret (tests only)."""
        with self._lock:
            self._secrets.clear()
            self._text = self._bytes = None


#: the process-wide registry
SECRETS = Redactor()


def text(s: str) -> str:
    return SECRETS.text(s)


def data(b: bytes) -> bytes:
    return SECRETS.bytes(b)


def secrets_of(config: Config, environ: Mapping[str, str]) -> list[str]:
    """Every secret ``config`` resolves in ``environ``."""
    out: list[str] = []
    for pc in config.providers.values():
        out.extend(secret for secret, _ in pc.resolve_keys(environ))
        for name, value in pc.headers.items():
            if any(w in name.lower() for w in _SECRET_HEADER_WORDS):
                out.append(value)
                if " " in value:  # "Bearer <token>": the token alone too
                    out.append(value.split(" ", 1)[1])
        parts = urlsplit(pc.base_url)
        if parts.password:
            out.extend((parts.password, unquote(parts.password)))
    if config.store.url:  # the PostgreSQL URL's password ([store] url or url_env)
        parts = urlsplit(config.store.url)
        if parts.password:
            out.extend((parts.password, unquote(parts.password)))
    for section in ("admin", "metrics"):
        try:
            token = config.token(section, environ)
        except Exception:  # an unset variable is the config loader's to report, not ours
            token = None
        if token:
            out.append(token)
    if config.webhooks is not None and config.webhooks.secret_env:
        hook = environ.get(config.webhooks.secret_env)
        if hook:
            out.append(hook)
    return out


def register(config: Config, environ: Mapping[str, str]) -> None:
    """Register every secret of ``config`` and make sure log records are redacted."""
    SECRETS.add(secrets_of(config, environ))
    install_logging()


# ---- logging -------------------------------------------------------------------------------------

_installed = False
_install_lock = threading.Lock()


def install_logging() -> None:
    """Wrap the log record factory (once per process) so every record is redacted when it is made:
    its message (arguments applied) and, if it carries one, its formatted traceback."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if SECRETS:
                _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _install_excepthooks()


def _install_excepthooks() -> None:
    """Uncaught exceptions (the main thread's, a thread's) print their traceback redacted too."""
    def write(exc_type: Any, exc: Any, tb: Any) -> None:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        stream = sys.stderr if sys.stderr is not None else sys.__stderr__
        if stream is not None:
            stream.write(SECRETS.text(text))

    previous_sys = sys.excepthook
    previous_thread = threading.excepthook

    def sys_hook(exc_type: Any, exc: Any, tb: Any) -> None:
        if SECRETS and previous_sys is sys.__excepthook__:
            write(exc_type, exc, tb)
        else:
            previous_sys(exc_type, exc, tb)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if SECRETS and previous_thread is threading.__excepthook__ and args.exc_type is not SystemExit:
            name = args.thread.name if args.thread is not None else "?"
            stream = sys.stderr if sys.stderr is not None else sys.__stderr__
            if stream is not None:
                stream.write(f"Exception in thread {name}:\n")
            write(args.exc_type, args.exc_value, args.exc_traceback)
        else:
            previous_thread(args)

    sys.excepthook = sys_hook
    threading.excepthook = thread_hook


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it when the record is emitted
        return
    clean = SECRETS.text(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        formatted = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = SECRETS.text(formatted)
    if record.stack_info:
        record.stack_info = SECRETS.text(record.stack_info)
