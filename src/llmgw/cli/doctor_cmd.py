"""``llmgw doctor``: check an installation and say what is wrong in plain words.

Checks, in order: the state directory; the config file (found, valid: every problem listed); the
database (opens, ``PRAGMA integrity_check``, migrations current, ledger rows, WAL size); each enabled
provider (its API key variables set or not, never their values; reachable with a models-list call
unless ``--offline``); the semantic cache index file.

Invariants:

* Doctor only reads: it opens the database read-only and never creates, migrates or repairs
  anything, so it is safe next to a running daemon and on a damaged home.
* A secret never appears in its output: keys are named by their environment variable, URLs are
  shown with their credentials redacted, and a failed call is described in our own words.
* One line per check on stdout, ``ok|warn|fail  CHECK: DETAIL`` (``--json``: a list of
  ``{check, status, detail}``). Exit 0 when no check failed (warnings do not fail), 1 otherwise.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import ConfigOpt, HomeOpt, print_json, resolve_home

if TYPE_CHECKING:
    import aiohttp

    from ..config import Config, ProviderConfig

#: the semantic cache's vector index, next to the database (usearch file)
#: a WAL file larger than this means checkpoints are not keeping up (a reader holding a snapshot?)
WAL_WARN_BYTES = 512 * 1024 * 1024
ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True)
class Check:
    check: str
    status: str  # "ok" | "warn" | "fail"
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.check}: {self.detail}"


def doctor(
    config: ConfigOpt = None,
    home: HomeOpt = None,
    json: Annotated[bool, typer.Option("--json", help="Print the checks as a JSON list of "
                                                      "{check, status, detail} instead of lines.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Do not call the providers (no network): "
                                                            "only check that their key variables are set.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS", min=0.1,
                                           help="How long each provider call may take.")] = 5.0,
) -> None:
    """Check the config, the database (and the PostgreSQL store of [store] url), the providers and the
    cache index; say what is wrong.

    Prints one line per check, 'ok|warn|fail  CHECK: DETAIL'. Exit status 0 when no check failed
    (warnings included), 1 when one did. Doctor only reads: it never creates, migrates or repairs
    anything, and never prints an API key (keys are named by their environment variable).
    """
    h = resolve_home(home)
    checks: list[Check] = []
    checks.append(Check("home", "ok", str(h)) if h.is_dir()
                  else Check("home", "warn", f"{h} does not exist yet (created by the first command that writes)"))
    checks.append(_check_daemon(h, min(timeout, 2.0)))
    cfg = _check_config(checks, config, h)
    _check_database(checks, h)
    if cfg is not None and cfg.store.url:
        _check_store(checks, cfg.store.url)
    if cfg is not None:
        _check_providers(checks, cfg, offline=offline, timeout=timeout)
    else:
        checks.append(Check("providers", "warn", "not checked: the config file has problems (see above)"))
    _check_cache_index(checks, h)

    if json:
        print_json([asdict(c) for c in checks])
    else:
        sys.stdout.write("".join(c.line() + "\n" for c in checks))
    sys.stdout.flush()
    failed = sum(c.status == "fail" for c in checks)
    if failed:
        from ..errors import LlmgwError

        raise LlmgwError(f"doctor: {failed} check(s) failed")  # the CLI's funnel: stderr line, exit 1


# ---- daemon --------------------------------------------------------------------------------------


def _check_daemon(home: Path, timeout: float) -> Check:
    """Whether an ``llmgw serve`` runs on this home, and where (its ``daemon.json``, checked: the pid
    alive and ``/healthz`` answering on the loopback address it listens on)."""
    import urllib.error
    import urllib.request

    from . import daemonfile

    info = daemonfile.read(home)
    if info is None:
        return Check("daemon", "ok", "none running on this home")
    pid, url = info["pid"], info["url"]
    since = f" since {info['started_at']}" if info.get("started_at") else ""
    if not daemonfile.pid_alive(pid):
        return Check("daemon", "warn", f"not running: {daemonfile.path(home)} names pid {pid} ({url}), which has "
                                       "exited without removing it (killed?); the file is stale and can be deleted")
    probe = url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:") + "/healthz"
    try:
        with urllib.request.urlopen(probe, timeout=timeout) as r:
            healthy = r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        healthy = False
    if not healthy:
        return Check("daemon", "warn", f"pid {pid} is running{since} but {url} does not answer /healthz")
    return Check("daemon", "ok", f"running, pid {pid}, listening on {url}{since}")


# ---- config --------------------------------------------------------------------------------------


def _check_config(out: list[Check], config: Path | None, home: Path) -> Config | None:
    """The config check; the loaded config when it is valid (None when it is not)."""
    from .. import paths
    from ..config import load, validate_file
    from ..errors import ConfigError

    path = paths.find_config(config, home)
    if path is None:
        out.append(Check("config", "ok", "no config file (--config, $LLMGW_CONFIG, LLMGW_HOME/llmgw.toml): "
                                         "built-in defaults apply"))
        return load(None)
    if not path.exists():
        out.append(Check("config", "fail", f"{path}: config file not found"))
        return None
    problems = validate_file(path)
    if problems:
        out.extend(Check("config", "fail", p) for p in problems)
        return None
    try:
        cfg = load(path)
    except ConfigError as e:  # changed between the two reads: report what load saw
        out.extend(Check("config", "fail", line) for line in e.message.splitlines())
        return None
    out.append(Check("config", "ok", f"{path}: valid"))
    return cfg


# ---- database ------------------------------------------------------------------------------------


def _check_database(out: list[Check], home: Path) -> None:
    import sqlite3

    from .. import paths
    from ..store import db

    path = paths.db_path(home)
    if not path.exists():
        out.append(Check("database", "warn", f"none yet at {path} (the first command that writes creates it)"))
        return
    if not path.is_file():
        out.append(Check("database", "fail", f"{path} is not a file"))
        return
    conn: sqlite3.Connection | None = None
    try:
        conn = db.connect(path, readonly=True)
        problems = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
            out.append(Check("database", "fail", f"{path}: integrity check found {len(problems)} problem(s): "
                                                 f"{shown} (restore a backup; 'sqlite3 {path.name} .recover' "
                                                 "may save the rest)"))
            return
        out.append(Check("database", "ok", f"{path}: integrity check ok"))
        out.append(_migrations(conn, db))
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "ledger" in tables:
            n = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
            out.append(Check("ledger", "ok", f"{n} row(s)"))
        else:
            out.append(Check("ledger", "warn", "no ledger table yet (created by the migrations)"))
    except sqlite3.Error as e:
        what = "not an SQLite database" if "not a database" in str(e) else f"damaged or unreadable ({e})"
        out.append(Check("database", "fail", f"{path}: {what}; restore a backup, or move the file away to "
                                             "start afresh"))
        return
    finally:
        if conn is not None:
            conn.close()
    wal = path.with_name(path.name + "-wal")
    if not wal.exists():
        out.append(Check("wal", "ok", "no WAL file (checkpointed; no writer has the database open)"))
        return
    size = wal.stat().st_size
    if size > WAL_WARN_BYTES:
        out.append(Check("wal", "warn", f"{wal}: {_size(size)}, large: a long-lived reader may be holding "
                                        "back checkpoints"))
    else:
        out.append(Check("wal", "ok", f"{_size(size)}"))


def _check_store(out: list[Check], url: str) -> None:
    """``[store] url``: the PostgreSQL server answers, its migrations are current, its ledger rows."""
    import sqlite3

    from ..store import db
    from ..store.conn import PgStore

    store = PgStore(url)
    try:
        conn = db.connect(store, readonly=True)
    except sqlite3.Error as e:
        out.append(Check("store", "fail", f"{store.label}: {store.scrub(str(e))}"))
        return
    try:
        version = conn.execute("SHOW server_version").fetchone()[0]
        out.append(Check("store", "ok", f"{store.label}: PostgreSQL {version}"))
        known = [fn.__name__ for fn in db.MIGRATIONS]
        applied = db.applied(conn)
        missing = [n for n in known if n not in applied]
        if not applied:
            out.append(Check("store migrations", "warn", "none applied yet (the first command that writes, or "
                                                         "llmgw serve, applies them)"))
        elif missing:
            out.append(Check("store migrations", "warn", f"{len(missing)} pending ({', '.join(missing)}): applied"
                                                         " by the next command that writes, or llmgw serve"))
        else:
            out.append(Check("store migrations", "ok", f"current ({len(known)} applied)"))
        if applied:
            n = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
            out.append(Check("store ledger", "ok", f"{n} row(s)"))
    except sqlite3.Error as e:
        out.append(Check("store", "fail", f"{store.label}: {store.scrub(str(e))}"))
    finally:
        conn.close()


def _migrations(conn: Any, db: Any) -> Check:
    import sqlite3

    known = [fn.__name__ for fn in db.MIGRATIONS]
    try:
        applied = {r[0] for r in conn.execute(f"SELECT name FROM {db.MIGRATIONS_TABLE} WHERE migration_set = ?",
                                              (db.MIGRATION_SET,))}
    except sqlite3.OperationalError:
        applied = set()
    unknown = sorted(applied - set(known))
    pending = [n for n in known if n not in applied]
    if unknown:
        return Check("migrations", "fail", f"the database has migrations this llmgw does not know "
                                           f"({', '.join(unknown)}): a newer llmgw wrote it; upgrade llmgw")
    if pending:
        return Check("migrations", "warn", f"{len(pending)} pending ({', '.join(pending)}): the next command "
                                           "that writes (e.g. llmgw serve) applies them")
    return Check("migrations", "ok", f"current ({len(known)} applied)")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


# ---- providers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Probe:
    check: str
    provider: ProviderConfig
    env: str | None  # the variable the key came from (None: no key)
    secret: str | None = field(default=None, repr=False)  # never shown, even in a repr


def _check_providers(out: list[Check], cfg: Config, *, offline: bool, timeout: float) -> None:
    providers = cfg.enabled_providers()
    if not providers:
        out.append(Check("providers", "warn", "none enabled: every request will fail"))
        return
    probes: list[tuple[int, _Probe]] = []  # (where its result goes in ``out``, probe)
    for name, pc in providers.items():
        check = f"provider {name}"
        if pc.type == "demo":
            out.append(Check(check, "ok", "built-in demo provider (offline, always available)"))
            continue
        have = [(k.env, os.environ.get(k.env, "")) for k in pc.keys if os.environ.get(k.env)]
        missing = [k.env for k in pc.keys if not os.environ.get(k.env)]
        if not pc.keys:
            out.append(Check(f"{check} key", "ok", "none configured (the server must accept requests without one)"))
        elif missing and have:
            out.append(Check(f"{check} key", "warn", f"{', '.join(missing)} not set; using "
                                                     f"{', '.join(env for env, _ in have)}"))
        elif missing:
            out.append(Check(f"{check} key", "warn", f"{', '.join(missing)} not set: requests routed to "
                                                     f"{name} will fail"))
        else:
            out.append(Check(f"{check} key", "ok", f"{', '.join(env for env, _ in have)} set"))
        if offline:
            out.append(Check(f"{check} reachable", "ok", "not checked (--offline)"))
        elif pc.keys and not have:
            out.append(Check(f"{check} reachable", "warn", "not checked: no API key to call it with"))
        else:
            # every key of a pool: one bad key fails a share of the requests
            pairs: list[tuple[str | None, str | None]] = list(have) or [(None, None)]
            for env, secret in pairs:
                suffix = f" ({env})" if len(have) > 1 else ""
                probes.append((len(out), _Probe(f"{check} reachable{suffix}", pc, env, secret)))
                out.append(Check(f"{check} reachable{suffix}", "fail", "not checked"))  # replaced below
    if probes:
        import asyncio

        results = asyncio.run(_probe_all([p for _, p in probes], timeout))
        for (at, _), result in zip(probes, results, strict=True):
            out[at] = result


async def _probe_all(probes: list[_Probe], timeout: float) -> list[Check]:
    import asyncio

    import aiohttp

    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(_probe(session, p, timeout) for p in probes)))


def _models_url(pc: ProviderConfig) -> str:
    # base URLs as the adapters use them: OpenAI-style ends in /v1, Anthropic-style has no /v1
    return pc.base_url + ("/v1/models" if pc.type == "anthropic" else "/models")


async def _probe(session: aiohttp.ClientSession, p: _Probe, timeout: float) -> Check:
    """GET the provider's models list; a Check in plain words (never the key, never a raw error)."""
    from urllib.parse import urlsplit

    import aiohttp

    from ..config import _redact_url

    pc = p.provider
    url = _models_url(pc)
    shown = _redact_url(url)
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    headers = dict(pc.headers)
    if pc.type == "anthropic":
        headers["anthropic-version"] = ANTHROPIC_VERSION
        if p.secret:
            headers["x-api-key"] = p.secret
    elif p.secret:
        headers["Authorization"] = f"Bearer {p.secret}"
    key_words = f"the key in {p.env}" if p.env else "no key"

    def fail(detail: str) -> Check:
        return Check(p.check, "fail", detail)

    try:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout),
                               allow_redirects=False) as resp:
            body = await resp.read()
            status, reason = resp.status, resp.reason or ""
    except TimeoutError:
        return fail(f"GET {shown}: no answer within {timeout:g} s (is {where} up and reachable from here?)")
    except aiohttp.ClientConnectorDNSError:
        return fail(f"GET {shown}: cannot resolve the host name {parts.hostname!r}")
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError):
        return fail(f"GET {shown}: TLS failed (certificate or protocol problem with {where})")
    except aiohttp.ClientConnectorError as e:
        why = "connection refused" if isinstance(e.os_error, ConnectionRefusedError) else \
            (e.os_error.strerror or type(e.os_error).__name__).lower()
        return fail(f"GET {shown}: cannot connect to {where} ({why}); is the server running?")
    except aiohttp.ClientError as e:
        return fail(f"GET {shown}: the call failed ({type(e).__name__})")
    if status in (401, 403):
        if p.env:
            return fail(f"GET {shown} answered {status} {reason}: {key_words} was refused")
        return fail(f"GET {shown} answered {status} {reason}: the server wants an API key and none is "
                    "configured (api_key_env)")
    if status == 404:
        hint = ("base_url is the API root without /v1" if pc.type == "anthropic"
                else "base_url should end where /models is served, usually .../v1")
        return fail(f"GET {shown} answered 404 Not Found: is base_url right? ({hint})")
    if status != 200:
        return fail(f"GET {shown} answered HTTP {status} {reason}".rstrip())
    count = _model_count(body)
    if count is None:
        return Check(p.check, "warn", f"GET {shown} answered 200 but not with a models list: is base_url right?")
    return Check(p.check, "ok", f"GET {shown} answered 200 with {key_words} ({count} model(s) listed)")


def _model_count(body: bytes) -> int | None:
    import json

    try:
        doc = json.loads(body)
    except ValueError:
        return None
    data = doc.get("data") if isinstance(doc, dict) else None
    return len(data) if isinstance(data, list) else None


# ---- cache index ---------------------------------------------------------------------------------


def _check_cache_index(out: list[Check], home: Path) -> None:
    from .. import paths

    index = paths.cache_index_path(home)
    if not index.exists():
        out.append(Check("cache index", "ok", "no semantic cache index (cache not in use)"))
    elif not index.is_file():
        out.append(Check("cache index", "fail", f"{index} is not a file"))
    elif index.stat().st_size == 0:
        out.append(Check("cache index", "warn", f"{index} is empty: the semantic cache starts from nothing"))
    else:
        out.append(Check("cache index", "ok", f"{index} present ({_size(index.stat().st_size)})"))
