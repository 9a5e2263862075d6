"""The response cache in its own process: the daemon's HTTP event loop never pays for it in GIL time.

    python -m llmgw.cache.sidecar LLMGW_HOME

Why a process: a semantic lookup or store is pure CPU in Python (the request's keys, the field
guard's regexes, the model2vec embedding, numpy, SQLite). On the event loop, or in a thread that
shares its GIL, all of it is serial with the request handling: measured on 2 cores at c=32, every
request a miss, the loop plus the old writer thread spent ~1,150 µs of GIL time per request
against ~540 µs with the cache off (0.5x the throughput). In its own process it runs on the other
core; the loop only frames the request and reads the answer.

Owns (the client, ``CacheSidecar``, on the daemon's loop): starting the process, handing it
operations, resolving their futures from its answers, restarting it after a crash. Owns (the
process, ``serve``): one ``semantic.ResponseCache`` with ``autocommit = False``: the model, the
partitions, the index and one SQLite connection; nothing else in the daemon touches the cache.

Invariants:
- Operations are handled one at a time, in the order they were submitted: a lookup submitted
  after a store finds that store's entry (the daemon's answer does not wait for its store, and a
  client's next request still finds it: a lookup that a queued store may answer commits it
  first). Stores, hit touches, the hit log and labels are queued and written together by one
  short transaction at most ``COMMIT_EVERY`` (25 ms) after the first of them, so the cache never
  holds SQLite's write lock while it embeds or searches (the ledger writer shares the file), and
  other processes (``llmgw cache hits``) see them within that time.
- Lookups and the ``init`` (open, and for semantic mode load the model and the partitions) are
  awaited; stores, shadow records and labels are not: their failures reach ``on_error(op, exc)``
  (``Gateway.cache_failed``) like any other cache failure: a failing cache is a miss, never a
  failed request.
- The process dying fails every operation it had not answered with ``CacheUnavailable`` (requests
  go on as misses); the next operation starts a new process, no sooner than ``RESTART_FIRST``
  seconds after the death, doubling to ``RESTART_MAX`` while it keeps dying. While the restarted
  process loads, lookups wait for it (in order), as at start.
- The process ignores SIGINT and SIGTERM (they reach the whole process group) and exits once its
  stdin reaches EOF, after committing and saving the index: ``close`` decides when it stops.

Protocol (both directions: frames of a 4-byte little-endian length and a pickle; both ends are
this package, started by this daemon): to the process ``[(seq, op, args), ...]``; from it
``(entries, [(seq, exception or None, result), ...])`` after each batch it read, where ``entries``
is the cache's entry count (``llmgw_cache_entries``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import framing
from ..config import CacheConfig
from .replay import StreamedText
from .semantic import Keys, Lookup, request_keys

log = logging.getLogger("llmgw.cache")

RESTART_FIRST = 1.0  # seconds after a crash before the next process may start
RESTART_MAX = 30.0
STOP_TIMEOUT = 30.0  # seconds ``close`` waits for the process to finish its queue

class CacheUnavailable(RuntimeError):
    """The cache process is not running (it died, or restarts too often); the request is a miss."""


def frame(obj: Any) -> bytes:
    return framing.frame(obj, _dumps)


def unframe(buf: bytearray) -> list[Any]:
    return framing.unframe(buf, pickle.loads)


def _dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


# ---- the daemon's side ------------------------------------------------------------------------


class CacheSidecar:
    """The daemon's handle on its cache process (loop-side only)."""

    def __init__(self, home: Path, config: CacheConfig) -> None:
        self.home = home
        self.config = config
        self.entries = 0
        self.on_error: Callable[[str, Exception], None] | None = None
        self.restarts = 0
        self._semantic = config.mode == "semantic"
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd_out = self._fd_in = -1
        self._seq = 0
        self._waiting: dict[int, tuple[str, asyncio.Future[Any] | None]] = {}
        self._outgoing: list[tuple[int, str, Any]] = []
        self._outbuf = bytearray()
        self._inbuf = bytearray()
        self._retry_at = 0.0
        self._delay = RESTART_FIRST
        self._stopped = False
        self._gone: asyncio.Event | None = None  # set when the process's output reached EOF
        self._drained: asyncio.Event | None = None  # set when the pipe took everything queued for it

    # ---- operations ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the process and wait until it has opened the cache (and, in semantic mode,
        loaded the model and the partitions). Raises what the loading raised."""
        init = self._ensure()
        if init is not None:
            await init

    async def lookup(self, body: dict[str, Any], *, inbound: str, scope: str, namespace: str, use_guard: bool,
                     patterns: tuple[str, ...] | list[str], semantic: bool, threshold: float | None, now_ms: int,
                     request_id: str, log_hit: bool, remember: bool) -> tuple[Lookup | None, float, Exception | None]:
        """``(what the lookup found, seconds it took in the process, what made the lookup fail)``;
        ``threshold`` None: no lookup (a ``no-cache`` request that may still be stored).
        ``remember``: the process keeps the request's keys for its ``store`` (by ``request_id``), so
        they never cross the pipe. Raises when the process did not answer."""
        fut = self._call("lookup", (body, inbound, scope, namespace, use_guard, tuple(patterns), semantic,
                                    threshold, now_ms, request_id, log_hit, remember), wait=True)
        assert fut is not None
        return await fut

    def store(self, request_id: str, semantic: bool, body: bytes | StreamedText, usage_json: str, cost: int,
              ttl_ms: int | None, now_ms: int) -> None:
        """Store the complete answer of the request whose lookup remembered its keys (not awaited:
        a later lookup of this daemon finds it); a ``StreamedText`` becomes the answer there."""
        self._call("store", (request_id, semantic, body if isinstance(body, StreamedText) else bytes(body),
                             usage_json, int(cost), ttl_ms, now_ms), wait=False)

    def record_label(self, source: str, request_id: str, entry_id: int | None, similarity: float | None,
                     cached_prompt: str | None, asked_prompt: str | None, label: int | None, now_ms: int) -> None:
        """Keep a labelled pair for ``ablate`` (``semantic.ResponseCache.record_label``)."""
        self._call("label", (source, request_id, entry_id, similarity, cached_prompt, asked_prompt, label, now_ms),
                   wait=False)

    def log_shadow(self, request_id: str, now_ms: int, hit: Any, prompt: str) -> None:
        self._call("shadow", (request_id, now_ms, hit, prompt), wait=False)

    # ---- the process ---------------------------------------------------------------------------
    def _call(self, op: str, args: Any, *, wait: bool) -> asyncio.Future[Any] | None:
        self._ensure()
        return self._queue(op, args, wait)

    def _queue(self, op: str, args: Any, wait: bool) -> asyncio.Future[Any] | None:
        loop = self._loop
        assert loop is not None
        self._seq += 1
        fut = loop.create_future() if wait else None
        self._waiting[self._seq] = (op, fut)
        self._outgoing.append((self._seq, op, args))
        if len(self._outgoing) == 1:
            loop.call_soon(self._hand_over)  # everything submitted in this loop iteration: one frame
        return fut

    def _ensure(self) -> asyncio.Future[Any] | None:
        """A running process (started now if there is none): the future of its ``init`` when it
        was started now."""
        if self._stopped:
            raise CacheUnavailable("the response cache is stopped")
        if self._proc is not None:
            return None
        now = time.monotonic()
        if now < self._retry_at:
            raise CacheUnavailable("the cache process died; a new one starts after the restart delay")
        self._loop = asyncio.get_running_loop()
        pkg_root = str(Path(__file__).resolve().parents[2])
        boot = f"import sys; sys.path.append({pkg_root!r}); from llmgw.cache.sidecar import main; main()"
        try:
            proc = subprocess.Popen([sys.executable, "-c", boot, str(self.home)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        except OSError as e:
            self._retry_at = now + self._delay
            raise CacheUnavailable(f"cannot start the cache process ({sys.executable}): {e}") from e
        assert proc.stdin is not None and proc.stdout is not None
        self._proc, self._fd_out, self._fd_in = proc, proc.stdin.fileno(), proc.stdout.fileno()
        os.set_blocking(self._fd_out, False)
        os.set_blocking(self._fd_in, False)
        self._gone = asyncio.Event()
        self._loop.add_reader(self._fd_in, self._on_readable)
        init = self._queue("init", (self.config, self._semantic), True)
        assert init is not None
        init.add_done_callback(self._on_init)
        return init

    def _on_init(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._delay = RESTART_FIRST  # it came up: the next crash waits the first delay again

    def _hand_over(self) -> None:
        ops, self._outgoing = self._outgoing, []
        if not ops or self._proc is None:
            return
        try:
            data = frame(ops)
        except Exception:  # an argument that cannot be pickled: that operation fails alone
            keep = []
            for item in ops:
                try:
                    pickle.dumps(item)
                    keep.append(item)
                except Exception as e:
                    self._answer(item[0], CacheUnavailable(f"cannot hand the operation over: {e}"), None)
            data = frame(keep) if keep else b""
        self._send(data)

    def _send(self, data: bytes) -> None:
        if not data:
            return
        if self._outbuf:
            self._outbuf += data
            return
        try:
            n = os.write(self._fd_out, data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._die(f"cannot be written to ({e})")
            return
        if n < len(data):
            self._outbuf += data[n:]
            assert self._loop is not None
            self._loop.add_writer(self._fd_out, self._flush)

    def _flush(self) -> None:
        try:
            n = os.write(self._fd_out, self._outbuf)
        except BlockingIOError:
            return
        except OSError as e:
            self._die(f"cannot be written to ({e})")
            return
        del self._outbuf[:n]
        if not self._outbuf and self._loop is not None:
            self._loop.remove_writer(self._fd_out)
            if self._drained is not None:
                self._drained.set()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd_in, framing.READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            self._die(f"cannot be read from ({e})")
            return
        if not data:
            self._die("exited")
            return
        self._inbuf += data
        for entries, answers in unframe(self._inbuf):
            self.entries = entries
            for seq, exc, result in answers:
                self._answer(seq, exc, result)

    def _answer(self, seq: int, exc: Exception | None, result: Any) -> None:
        op, fut = self._waiting.pop(seq, ("", None))
        if fut is not None:
            if not fut.done():
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
        elif exc is not None and self.on_error is not None:
            self.on_error("store" if op == "store" else "record", exc)

    def _die(self, why: str) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd_in)
            loop.remove_writer(self._fd_out)
        for f in (proc.stdin, proc.stdout):
            if f is not None and not f.closed:
                f.close()
        self._outbuf.clear()
        self._inbuf.clear()
        code = proc.poll()
        if code is None and loop is not None and not loop.is_closed():
            loop.run_in_executor(None, proc.wait)  # reap it once it is gone
        if not self._stopped:
            self.restarts += 1
            self._retry_at = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, RESTART_MAX)
            log.error("the response cache process %s%s; requests go on as misses until a new one starts "
                      "(in %.0f s at the earliest)", why, "" if code is None else f" (exit code {code})",
                      self._retry_at - time.monotonic())
        waiting, self._waiting = self._waiting, {}
        lost = CacheUnavailable(f"the cache process {why}")
        reported = False
        for op, fut in waiting.values():
            if fut is not None:
                if not fut.done():
                    fut.set_exception(lost)
            elif not reported and not self._stopped and self.on_error is not None:
                reported = True  # writes nobody waits for: counted once, not once per write
                self.on_error("store" if op == "store" else "record", lost)
        for event in (self._gone, self._drained):
            if event is not None:
                event.set()

    async def close(self) -> None:
        """Hand over what is queued, let the process finish it (commit, save the index) and stop."""
        self._stopped = True
        proc = self._proc
        if proc is None:
            return
        self._hand_over()
        gone = self._gone
        assert gone is not None
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                self._drained = drained = asyncio.Event()
                while self._outbuf and self._proc is not None:
                    drained.clear()
                    await drained.wait()  # the pipe takes the rest as the process reads
                if proc.stdin is not None and not proc.stdin.closed:
                    if self._loop is not None:
                        self._loop.remove_writer(self._fd_out)
                    proc.stdin.close()  # EOF: the process finishes its queue and exits
                await gone.wait()  # its answers keep coming in until its output closes
        except TimeoutError:
            proc.kill()
            self._die("did not finish in time and was killed")
        await asyncio.to_thread(proc.wait)


# ---- the process ------------------------------------------------------------------------------


#: requests whose keys the process keeps for their store, oldest first (a lookup with
#: ``remember``; popped by the store; beyond ``REMEMBER_MAX`` the oldest are dropped: a request
#: that never stores, because it failed, must not hold memory for ever)
_remembered: dict[str, Keys] = {}
REMEMBER_MAX = 8192


def _handle(cache: Any, op: str, args: Any) -> Any:
    if op == "lookup":
        (body, inbound, scope, namespace, use_guard, patterns, semantic, threshold, now_ms, request_id, log_hit,
         remember) = args
        t0 = time.perf_counter()
        keys = request_keys(body, inbound=inbound, scope=scope, namespace=namespace, use_guard=use_guard,
                            patterns=patterns)
        if remember:
            if len(_remembered) >= REMEMBER_MAX:
                del _remembered[next(iter(_remembered))]
            _remembered[request_id] = keys
        found: Any = None
        failed = None
        if threshold is not None:
            try:
                found = cache.lookup(keys, semantic, threshold, now_ms, request_id, log_hit)
            except Exception as e:  # the keys still go back: the answer may still be stored
                failed = _portable(e)
                _log_bug(e, op)
        return found, time.perf_counter() - t0, failed
    if op == "store":
        request_id, *rest = args
        kept = _remembered.get(request_id)
        if kept is None:
            raise CacheUnavailable("the request's cache keys are gone (the cache process restarted since its "
                                   f"lookup, or more than {REMEMBER_MAX} requests waited to be stored)")
        del _remembered[request_id]
        semantic, body, usage_json, *more = rest
        if isinstance(body, StreamedText):
            body = body.completion(usage_json)
            if body is None:
                return None
        cache.store(kept, semantic, body, usage_json, *more)
        return None
    if op == "label":
        cache.record_label(*args)
        return None
    if op == "shadow":
        cache.log_shadow(*args)
        return None
    raise ValueError(f"unknown cache operation {op!r}")


_logged: set[str] = set()


def _log_bug(exc: Exception, op: str) -> None:
    """A failure that is not a resource problem is a bug: its traceback goes to the daemon's log
    (once per distinct error, at most 32)."""
    import sqlite3

    from ..errors import LlmgwError

    what = f"{type(exc).__name__}: {exc}"
    if what in _logged or len(_logged) >= 32 or isinstance(exc, OSError | ImportError | sqlite3.Error | LlmgwError):
        return
    _logged.add(what)
    log.error("response cache operation %s failed", op, exc_info=exc)


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives a pickle round trip, else a ``RuntimeError`` with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def serve(home: Path, fd_in: int, fd_out: int) -> None:
    """Handle operations from ``fd_in`` until EOF, answering on ``fd_out``; then commit and close.

    Stores and records are written by one commit at most ``COMMIT_EVERY`` seconds after the first
    of them (or earlier, by a lookup that a queued store may answer: ``ResponseCache.lookup``); if
    that commit fails, each of them is answered with the failure."""
    import gc

    from .semantic import ResponseCache

    cache: ResponseCache | None = None
    buf = bytearray()
    unwritten: list[int] = []  # the writes waiting for the commit
    due = 0.0  # when the queued writes are committed at the latest (time.monotonic)

    def commit() -> None:
        if cache is None or not (unwritten or cache.queued):  # a hit's touch and log are queued too
            return
        ready: list[tuple[int, Exception | None, Any]] = []
        try:
            cache.commit()
            ready.extend((w, None, None) for w in unwritten)
        except Exception as e:
            _log_bug(e, "commit")
            # seq 0 (no operation): touches and hit logs, which the daemon counts as "record"
            ready.extend((w, _portable(e), None) for w in unwritten or [0])
        cache.commit_error = None
        unwritten.clear()
        _send(fd_out, cache, ready)

    while True:
        if cache is not None and cache.queued and (len(cache._queued) >= COMMIT_MAX or time.monotonic() >= due):
            commit()
        if cache is not None and cache.queued:  # wait for more work, but not past the commit's due time
            if not select.select([fd_in], [], [], max(0.0, due - time.monotonic()))[0]:
                commit()
                continue
        data = os.read(fd_in, framing.READ_SIZE)
        if not data:
            break
        buf += data
        ready: list[tuple[int, Exception | None, Any]] = []  # answers to send
        for batch in unframe(buf):
            for seq, op, args in batch:
                queued = cache is not None and cache.queued
                try:
                    if op == "init":
                        config, semantic = args
                        if cache is None:
                            cache = ResponseCache(home, config, autocommit=False)
                        cache.warm(semantic)
                        gc.collect()
                        gc.freeze()  # the model and the partitions: out of the collector's sight
                        result = None
                    else:
                        if cache is None:
                            raise CacheUnavailable("the cache process got an operation before init")
                        result = _handle(cache, op, args)
                    if op in _WRITES:
                        unwritten.append(seq)
                    else:
                        ready.append((seq, None, result))
                except Exception as e:
                    _log_bug(e, op)
                    ready.append((seq, _portable(e), None))
                if cache is None:
                    continue
                if cache.commit_error is not None:  # a lookup's early commit failed
                    ready.extend((w, _portable(cache.commit_error), None) for w in unwritten)
                    unwritten.clear()
                elif unwritten and not cache.queued:  # committed by a lookup that needed them
                    ready.extend((w, None, None) for w in unwritten)
                    unwritten.clear()
                cache.commit_error = None
                if cache.queued and not queued:
                    due = time.monotonic() + COMMIT_EVERY
        if ready:  # the answers to everything this read brought, in one frame (one wakeup of the loop)
            _send(fd_out, cache, ready)
    commit()
    if cache is not None:
        cache.close()


#: the longest a store or record waits for its commit. The stores of 25 ms share one: a commit
#: writes each page its rows dirtied, so rows that share pages (the table's end, the time-ordered
#: indexes) cost less together: measured 15-19 us a row at 28 rows a commit (10 ms at ~2,800 misses a
#: second), 12-17 us at 70. A lookup that a queued store may answer commits it at once, so the daemon
#: reads its own writes; other processes (``llmgw cache hits``) see the writes within this time
COMMIT_EVERY = 0.025
COMMIT_MAX = 512  # queued writes that are committed at once

_WRITES = frozenset({"store", "label", "shadow"})


def _send(fd: int, cache: Any, answers: list[tuple[int, Exception | None, Any]]) -> None:
    out = frame((0 if cache is None else cache.entries, answers))
    while out:
        n = os.write(fd, out)
        out = out[n:]


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: "
                                                                         "%(message)s")
    home = Path(sys.argv[1])
    # answers go to a private copy of stdout; fd 1 becomes stderr, so a stray print (from any
    # library) lands in the daemon's log instead of corrupting the protocol
    answers = os.dup(1)
    os.dup2(2, 1)
    serve(home, 0, answers)


if __name__ == "__main__":
    main()
