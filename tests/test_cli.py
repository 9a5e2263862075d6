"""The real ``llmgw`` command line, run as a subprocess: stdout is data, stderr diagnostics, and every
failure goes through the one error funnel (``llmgw: error: ...``, a documented exit code, no traceback).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import llmgw
from llmgw.config import STARTER_TOML

# variables of the caller's environment that would change what the CLI reads
_SCRUB = ("LLMGW_CONFIG", "LLMGW_HOME", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL",
          "ANTHROPIC_BASE_URL")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:  # shown by pytest when an assertion on a Result fails
        return f"exit {self.code}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"


@dataclass
class Cli:
    home: Path
    tmp: Path

    def __call__(self, *args: str | Path, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> Result:
        environ = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        environ.update(LLMGW_HOME=str(self.home), XDG_DATA_HOME=str(self.tmp / "xdg"), COLUMNS="200")
        environ.update(env or {})
        proc = subprocess.run([sys.executable, "-m", "llmgw", *map(str, args)], env=environ, cwd=self.tmp,
                              capture_output=True, text=True, timeout=60, preexec_fn=preexec_fn)
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in res.out + res.err, res
        return res


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(home=tmp_path / "home", tmp=tmp_path)


def assert_error(res: Result, code: int, *fragments: str) -> None:
    """A failure through the funnel: the documented exit code and one ``llmgw: error:`` line on stderr."""
    assert res.code == code, res
    assert res.err.startswith("llmgw: error: "), res
    for fragment in fragments:
        assert fragment in res.err, res


def assert_one_line_error(res: Result, code: int, *fragments: str) -> None:
    """``assert_error``, and stderr is that one line and nothing else (no log lines, no traceback)."""
    assert_error(res, code, *fragments)
    assert len(res.err.splitlines()) == 1, res


# ---- init ----------------------------------------------------------------------------------------


def test_init_writes_starter_file_and_prints_its_path(cli: Cli) -> None:
    res = cli("init")
    target = cli.home / "llmgw.toml"
    assert res.code == 0, res
    assert res.out == f"{target}\n"
    assert target.read_text() == STARTER_TOML
    # the file it writes is a valid config, found by discovery (LLMGW_HOME/llmgw.toml) ...
    res = cli("config", "validate")
    assert res.code == 0, res
    assert res.out == ""
    assert f"{target}: ok" in res.err
    # ... and named explicitly
    assert cli("config", "validate", "--config", target).code == 0


def test_init_refuses_to_overwrite_without_force(cli: Cli) -> None:
    assert cli("init").code == 0
    target = cli.home / "llmgw.toml"
    target.write_text("# my edits\n")

    res = cli("init")
    assert_error(res, 2, str(target), "--force")
    assert res.out == ""
    assert target.read_text() == "# my edits\n"

    res = cli("init", "--force")
    assert res.code == 0, res
    assert res.out == f"{target}\n"
    assert target.read_text() == STARTER_TOML


def test_init_path(cli: Cli) -> None:
    target = cli.tmp / "etc" / "llmgw" / "gw.toml"
    res = cli("init", "--path", target)
    assert res.code == 0, res
    assert res.out == f"{target}\n"
    assert target.read_text() == STARTER_TOML
    assert not (cli.home / "llmgw.toml").exists()

    res = cli("config", "validate", "--config", target)
    assert res.code == 0, res
    assert f"{target}: ok" in res.err

    assert_error(cli("init", "--path", target), 2, str(target))


# ---- config validate -----------------------------------------------------------------------------

BAD_TOML = """\
[server]
port = "8080"

[retry]
max_retrys = 3

[aliases]
fast = "nope/gpt-4o-mini"
"""


def test_validate_reports_every_problem_with_file_and_key(cli: Cli) -> None:
    bad = cli.tmp / "bad.toml"
    bad.write_text(BAD_TOML)
    res = cli("config", "validate", "--config", bad)
    assert_error(res, 2, str(bad), "3 problem(s)")
    lines = res.out.splitlines()
    assert len(lines) == 3, res
    assert all(line.startswith(f"{bad}: ") for line in lines), res
    by_key = {line.removeprefix(f"{bad}: ").split(": ", 1)[0]: line for line in lines}
    assert set(by_key) == {"server.port", "retry.max_retrys", "aliases.fast"}, res
    assert "expected an integer" in by_key["server.port"]
    assert 'unknown key; did you mean "max_retries"?' in by_key["retry.max_retrys"]
    assert 'no provider named "nope"' in by_key["aliases.fast"]


def test_validate_checks_the_sections_the_daemon_checks(cli: Cli) -> None:
    bad = cli.tmp / "sections.toml"
    bad.write_text('[cache]\nmode = "sometimes"\n\n[webhooks]\nurl = "ftp://x"\n')
    res = cli("config", "validate", "--config", bad)
    assert_error(res, 2, str(bad), "2 problem(s)")
    assert f"{bad}: cache.mode:" in res.out and f"{bad}: webhooks.url:" in res.out, res
    good = cli.tmp / "good.toml"
    good.write_text('[cache]\nmode = "semantic"\nthreshold = 0.97\n')
    assert cli("config", "validate", "--config", good).code == 0


def test_validate_invalid_toml(cli: Cli) -> None:
    bad = cli.tmp / "broken.toml"
    bad.write_text('[server\nport = 8080\n')
    res = cli("config", "validate", "--config", bad)
    assert_error(res, 2, str(bad))
    assert res.out.startswith(f"{bad}: invalid TOML"), res
    assert "line 1" in res.out
    assert len(res.out.splitlines()) == 1, res


def test_validate_missing_file(cli: Cli) -> None:
    missing = cli.tmp / "missing.toml"
    res = cli("config", "validate", "--config", missing)
    assert_error(res, 2, str(missing), "not found")
    assert res.out == ""


def test_validate_without_any_config_file(cli: Cli) -> None:
    res = cli("config", "validate")
    assert res.code == 0, res
    assert res.out == ""
    assert "no config file found" in res.err


def test_config_discovery_order(cli: Cli) -> None:
    """``--config`` beats ``LLMGW_CONFIG`` beats ``LLMGW_HOME/llmgw.toml``."""
    valid = cli.tmp / "valid.toml"
    valid.write_text('[server]\nport = 9000\n')
    env_bad = cli.tmp / "env-bad.toml"
    env_bad.write_text('[server]\nport = "env"\n')
    home_bad = cli.home / "llmgw.toml"
    home_bad.parent.mkdir(parents=True)
    home_bad.write_text('[log]\nbodys = true\n')

    # only the home file: it is found
    res = cli("config", "validate")
    assert_error(res, 2, str(home_bad))
    assert res.out.startswith(f"{home_bad}: log.bodys: unknown key"), res

    # LLMGW_CONFIG beats the home file (either way round)
    res = cli("config", "validate", env={"LLMGW_CONFIG": str(env_bad)})
    assert_error(res, 2, str(env_bad))
    assert res.out.startswith(f"{env_bad}: server.port: "), res
    assert str(home_bad) not in res.out + res.err
    res = cli("config", "validate", env={"LLMGW_CONFIG": str(valid)})
    assert res.code == 0, res
    assert f"{valid}: ok" in res.err

    # --config beats LLMGW_CONFIG (either way round)
    res = cli("config", "validate", "--config", valid, env={"LLMGW_CONFIG": str(env_bad)})
    assert res.code == 0, res
    assert f"{valid}: ok" in res.err
    res = cli("config", "validate", "--config", env_bad, env={"LLMGW_CONFIG": str(valid)})
    assert_error(res, 2, str(env_bad))

    # config show follows the same order
    res = cli("config", "show", "--config", valid, env={"LLMGW_CONFIG": str(env_bad)})
    assert res.code == 0, res
    assert json.loads(res.out)["path"] == str(valid)
    res = cli("config", "show", env={"LLMGW_CONFIG": str(valid)})
    assert res.code == 0, res
    assert json.loads(res.out)["path"] == str(valid)
    assert_error(cli("config", "show"), 2, str(home_bad), "log.bodys")


# ---- config show ---------------------------------------------------------------------------------

SHOW_TOML = """\
[providers.openai]
api_key_env = "OPENAI_API_KEY"

[providers.anthropic]
type = "anthropic"

[providers.vllm]
type = "openai"
base_url = "https://user:url-password-123@vllm.internal:8000/v1"
keys = [{ env = "VLLM_KEY_A", weight = 3 }, "VLLM_KEY_B"]
headers = { "X-Secret-Header" = "header-secret-456" }
models = ["llama"]

[aliases]
fast = ["vllm/llama", "openai/gpt-4o-mini"]
"""

SECRETS = {
    "OPENAI_API_KEY": "sk-secret-xyz",
    "ANTHROPIC_API_KEY": "sk-ant-secret-abc",
    "VLLM_KEY_A": "vllm-secret-a-789",
    "VLLM_KEY_B": "vllm-secret-b-012",
}


def test_config_show_prints_providers_without_secrets(cli: Cli) -> None:
    path = cli.tmp / "show.toml"
    path.write_text(SHOW_TOML)
    res = cli("config", "show", "--config", path, env=SECRETS)
    assert res.code == 0, res
    doc = json.loads(res.out)
    assert doc["path"] == str(path)
    assert set(doc["providers"]) == {"openai", "anthropic", "vllm"}
    assert doc["providers"]["openai"]["key_env"] == ["OPENAI_API_KEY"]
    assert doc["providers"]["anthropic"]["key_env"] == ["ANTHROPIC_API_KEY"]
    assert doc["providers"]["vllm"]["key_env"] == ["VLLM_KEY_A", "VLLM_KEY_B"]
    assert doc["providers"]["vllm"]["models"] == ["llama"]
    assert doc["aliases"] == {"fast": ["vllm/llama", "openai/gpt-4o-mini"]}
    for secret in (*SECRETS.values(), "url-password-123", "header-secret-456"):
        assert secret not in res.out + res.err


def test_config_show_defaults_without_a_file(cli: Cli) -> None:
    res = cli("config", "show", env=SECRETS)
    assert res.code == 0, res
    doc = json.loads(res.out)
    assert doc["path"] is None
    assert set(doc["providers"]) == {"openai", "anthropic"}
    assert doc["providers"]["openai"]["key_env"] == ["OPENAI_API_KEY"]
    for secret in SECRETS.values():
        assert secret not in res.out + res.err


# ---- keys ----------------------------------------------------------------------------------------


def test_keys_create_list_and_secret_never_stored(cli: Cli) -> None:
    res = cli("keys", "create", "--name", "a")
    assert res.code == 0, res
    lines = res.out.splitlines()
    assert len(lines) == 1 and res.out == lines[0] + "\n", res
    secret = lines[0]
    assert secret.startswith("sk-llmgw-")
    assert len(secret) > len("sk-llmgw-") + 30
    assert secret not in res.err

    # the same name again: refused through the funnel, nothing on stdout
    res = cli("keys", "create", "--name", "a")
    assert_error(res, 2, "already exists")
    assert res.out == ""

    res = cli("keys", "list", "--json")
    assert res.code == 0, res
    rows = json.loads(res.out)
    assert len(rows) == 1
    assert rows[0]["name"] == "a"
    assert rows[0]["status"] == "active"
    assert rows[0]["display"] == "sk-llmgw-…" + secret[-4:]
    assert secret not in res.out + res.err
    assert secret[len("sk-llmgw-"):-4] not in res.out

    res = cli("keys", "list")
    assert res.code == 0, res
    assert "sk-llmgw-…" + secret[-4:] in res.out
    assert secret not in res.out + res.err

    # at rest: only the hash, in the database and in any file next to it (WAL included)
    db = cli.home / "llmgw.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        dump = "\n".join(conn.iterdump())
    assert secret not in dump
    assert hashlib.sha256(secret.encode()).hexdigest() in dump
    for f in cli.home.iterdir():
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_keys_list_shows_each_key_s_cache_threshold(cli: Cli) -> None:
    assert cli("keys", "create", "--name", "strict", "--cache-threshold", "0.97").code == 0
    assert cli("keys", "create", "--name", "default").code == 0
    out = cli("keys", "list", env={"COLUMNS": "250"}).out
    header, *lines = out.splitlines()
    assert "cache threshold" in header
    (strict,) = [ln for ln in lines if " strict " in ln]
    (default,) = [ln for ln in lines if " default " in ln]
    assert "0.97" in strict and "0.97" not in default
    csv_rows = cli("keys", "list", "--format", "csv").out.splitlines()
    col = csv_rows[0].split(",").index("cache_threshold")
    assert sorted(r.split(",")[col] for r in csv_rows[1:]) == ["", "0.97"]
    assert {r["name"]: r["cache_threshold"] for r in json.loads(cli("keys", "list", "--json").out)} == {
        "strict": 0.97, "default": None}


def test_keys_create_twice_gives_distinct_secrets(cli: Cli) -> None:
    a = cli("keys", "create", "--name", "one")
    b = cli("keys", "create", "--name", "two")
    assert a.code == b.code == 0
    assert a.out != b.out
    rows = json.loads(cli("keys", "list", "--json").out)
    assert sorted(r["name"] for r in rows) == ["one", "two"]


# ---- version, help, usage errors -----------------------------------------------------------------


def _command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand of the Typer app, e.g. ("keys", "create")."""
    import typer.main

    from llmgw.cli.main import app

    out: list[tuple[str, ...]] = []

    def walk(cmd: object, path: tuple[str, ...]) -> None:
        out.append(path)
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return out


COMMAND_PATHS = _command_paths()


def test_command_tree_is_known() -> None:
    expected = {(), ("serve",), ("init",), ("version",), ("config",), ("config", "validate"),
                ("config", "show"), ("keys",), ("keys", "create"), ("keys", "list")}
    assert expected <= set(COMMAND_PATHS)


def test_version(cli: Cli) -> None:
    res = cli("version")
    assert res.code == 0, res
    assert res.out == f"{llmgw.__version__}\n"
    for flag in ("--version", "-V"):
        res = cli(flag)
        assert res.code == 0 and res.out == f"llmgw {llmgw.__version__}\n", res


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "llmgw")
def test_help(cli: Cli, path: tuple[str, ...]) -> None:
    res = cli(*path, "--help")
    assert res.code == 0, res
    assert "Usage:" in res.out
    assert res.err == ""


@pytest.mark.parametrize("args", [("bogus",), ("keys", "bogus"), ("keys", "create", "--bogus"),
                                  ("init", "--force", "extra")])
def test_usage_errors_exit_2_without_traceback(cli: Cli, args: tuple[str, ...]) -> None:
    res = cli(*args)  # the fixture asserts there is no traceback
    assert res.code == 2, res
    assert res.out == ""
    assert "Error:" in res.err


def test_no_arguments_shows_help(cli: Cli) -> None:
    res = cli()
    assert res.code in (0, 2), res
    assert "Usage:" in res.out + res.err


# ---- failures are one clear line -------------------------------------------------------------------


def test_serve_on_a_port_in_use_is_one_line_and_starts_nothing(cli: Cli) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = cli("serve", "--host", "127.0.0.1", "--port", str(port))
    assert_one_line_error(res, 2, f"cannot listen on 127.0.0.1:{port}", "in use")
    assert not (cli.home / "llmgw.db").exists()  # the port is bound before the database or writer start


def test_serve_port_out_of_range_is_refused_not_wrapped(cli: Cli) -> None:
    for port in ("99999", "65536", "-1"):
        assert_one_line_error(cli("serve", "--port", port), 2, f"--port {port}: expected a port from 0 to 65535")


def test_serve_home_that_is_a_file_is_one_line(cli: Cli) -> None:
    f = cli.tmp / "a-file"
    f.write_text("not a directory")
    assert_one_line_error(cli("serve", "--port", "0", "--home", f), 2, f"cannot use {f} as the llmgw home",
                          "is a file")
    below = f / "home"
    assert_one_line_error(cli("serve", "--port", "0", "--home", below), 2, f"cannot use {below} as the llmgw home")
    assert f.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_serve_home_that_is_not_writable_is_one_line(cli: Cli) -> None:
    cli.home.mkdir()
    cli.home.chmod(0o500)
    try:
        assert_one_line_error(cli("serve", "--port", "0"), 2, f"cannot use {cli.home} as the llmgw home",
                              "not writable")
    finally:
        cli.home.chmod(0o700)


@pytest.mark.parametrize("make, fragment", [
    (lambda db: db.mkdir(), "unable to open database file"),  # a directory where the file should be
    (lambda db: db.write_bytes(b"\x8f not SQLite " * 512), "file is not a database"),
], ids=["directory", "garbage"])
def test_serve_with_an_unopenable_database_is_one_line(cli: Cli, make: Callable[[Path], None],
                                                         fragment: str) -> None:
    cli.home.mkdir()
    make(cli.home / "llmgw.db")
    assert_one_line_error(cli("serve", "--port", "0"), 2, f"cannot open the database {cli.home / 'llmgw.db'}",
                          fragment)


def _disk_full() -> None:
    """In the child: no file may grow (RLIMIT_FSIZE 0), and writing past it fails with EFBIG instead of
    killing the process, as on a full disk."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_serve_on_a_full_disk_is_one_line(cli: Cli) -> None:
    res = cli("serve", "--port", "0", preexec_fn=_disk_full)
    assert_one_line_error(res, 2, f"cannot open the database {cli.home / 'llmgw.db'}")
    res = cli("keys", "create", preexec_fn=_disk_full)
    assert_one_line_error(res, 2, f"cannot open the database {cli.home / 'llmgw.db'}")
    assert res.out == ""


READ_COMMANDS = [
    ("keys", "list"), ("keys", "show", "k"), ("keys", "disable", "k"), ("keys", "enable", "k"),
    ("keys", "revoke", "k"), ("keys", "rotate", "k"), ("customers", "list"), ("customers", "show", "c"),
    ("teams", "list"), ("budget", "show"), ("budget", "delete", "--id", "b"), ("report",),
    ("tail", "--no-follow"), ("cache", "stats"), ("cache", "clear"), ("cache", "inspect", "hello"),
    ("cache", "ablate", "--from-log"), ("cache", "hits"), ("cache", "delete", "1"), ("cache", "mark-wrong", "req_x"),
    ("config", "export"), ("top",),
    ("ledger", "rollup"), ("ledger", "prune", "--before", "2026-01-01", "--yes"), ("ledger", "export"),
]


def test_every_command_is_either_creating_read_or_without_a_database() -> None:
    """A new command must choose: create the home, or need an existing one (and be tested below)."""
    creating = {("serve",), ("init",), ("keys", "create"), ("customers", "create"), ("teams", "create"),
                ("budget", "set"), ("config", "apply")}
    no_database = {("version",), ("doctor",), ("config", "validate"), ("config", "show")}

    def command_of(args: tuple[str, ...]) -> tuple[str, ...]:
        n = 1
        while args[:n + 1] in COMMAND_PATHS and n < len(args):
            n += 1
        return args[:n]

    leaves = {p for p in COMMAND_PATHS if p and not any(len(q) > len(p) and q[:len(p)] == p for q in COMMAND_PATHS)}
    assert leaves == creating | no_database | {command_of(c) for c in READ_COMMANDS}


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_read_commands_on_a_mistyped_home_exit_4_and_create_nothing(cli: Cli, args: tuple[str, ...]) -> None:
    missing = cli.tmp / "no-such-home"
    assert_one_line_error(cli(*args, "--home", missing), 4, f"no llmgw home at {missing}: no such directory")
    assert not missing.exists()
    empty = cli.tmp / "empty-dir"
    empty.mkdir(exist_ok=True)
    assert_one_line_error(cli(*args, env={"LLMGW_HOME": str(empty)}), 4,
                          f"no llmgw home at {empty}: no llmgw.db in it")
    assert list(empty.iterdir()) == []


def test_read_command_on_a_corrupt_database_is_one_line(cli: Cli) -> None:
    cli.home.mkdir()
    (cli.home / "llmgw.db").write_bytes(b"garbage " * 1024)
    for args in (("keys", "list"), ("report",), ("tail", "--no-follow")):
        assert_one_line_error(cli(*args), 2, "file is not a database")


def test_creating_commands_still_create_the_home(cli: Cli) -> None:
    res = cli("customers", "create", "acme")
    assert res.code == 0, res
    assert (cli.home / "llmgw.db").is_file()
    other = cli.tmp / "other" / "home"
    res = cli("keys", "create", "--home", other)
    assert res.code == 0 and res.out.startswith("sk-llmgw-"), res
    assert (other / "llmgw.db").is_file()
    assert cli("keys", "list", "--home", other).code == 0


# ---- output that fits the terminal ----------------------------------------------------------------


def _home_with_rows(cli: Cli) -> None:
    assert cli("customers", "create", "acme_corporation_worldwide", "--name", "Acme Corporation").code == 0
    assert cli("keys", "create", "--name", "batch-captioning-prod", "--customer", "acme_corporation_worldwide",
               "--models", "openai/gpt-4o-mini,anthropic/claude-haiku-4-5-20251001").code == 0
    assert cli("budget", "set", "--customer", "acme_corporation_worldwide", "--limit", "1500.123456789",
               "--period", "month", "--auto-raise", "250", "--ceiling", "3000").code == 0
    assert cli("budget", "set", "--key", "batch-captioning-prod", "--limit", "15", "--period", "day",
               "--grace", "0.5").code == 0


@pytest.mark.parametrize("width", [80, 120])
def test_tables_never_cut_ids_or_money(cli: Cli, width: int) -> None:
    _home_with_rows(cli)
    budgets = json.loads(cli("budget", "show", "--json").out)
    keys = json.loads(cli("keys", "list", "--json").out)
    res = cli("budget", "show", env={"COLUMNS": str(width)})
    assert res.code == 0, res
    table = [line for line in res.out.splitlines() if not line.startswith("bud_") or "auto-raise" not in line]
    assert all(len(line) <= width for line in table), res.out
    for b in budgets:
        assert b["id"] in res.out  # whole: the id budget delete --id needs
    assert "$1500.123456789" in res.out and "$15.00" in res.out  # exact, never $15…
    assert "…" not in res.out
    res = cli("keys", "list", env={"COLUMNS": str(width)})
    assert res.code == 0, res
    assert all(len(line) <= width for line in res.out.splitlines()), res.out
    assert keys[0]["id"] in res.out and keys[0]["display"] in res.out and "…" not in res.out.replace(
        keys[0]["display"], "")
    if width == 80:  # what did not fit is named, on stderr
        assert "left out to fit the terminal" in res.err and "--format tsv" in res.err


def test_format_tsv_json_csv_wherever_a_table_is_printed(cli: Cli) -> None:
    import csv
    import io

    _home_with_rows(cli)
    for args in (("keys", "list"), ("customers", "list"), ("teams", "list"), ("budget", "show"), ("report",)):
        tsv = cli(*args, "--format", "tsv")
        assert tsv.code == 0, tsv
        rows = [line.split("\t") for line in tsv.out.splitlines()]
        assert len({len(r) for r in rows}) == 1, tsv.out  # a header and rows of the same width
        as_csv = list(csv.reader(io.StringIO(cli(*args, "--format", "csv").out)))
        assert as_csv == rows, args
        assert json.loads(cli(*args, "--format", "json").out) == json.loads(cli(*args, "--json").out)
    assert_error(cli("keys", "list", "--json", "--format", "csv"), 2, "--json and --format csv")
    rows = [line.split("\t") for line in cli("budget", "show", "--format", "tsv").out.splitlines()]
    head = rows[0]
    month = dict(zip(head, next(r for r in rows[1:] if r[head.index("period")] == "month"), strict=True))
    assert (month["limit"], month["auto_raise_usd"], month["ceiling_usd"], month["raises"]) == (
        "1500.123456789", "250.00", "3000.00", "0")
    assert month["name"] == "Acme Corporation" and month["scope_id"] == "acme_corporation_worldwide"


def test_budget_set_auto_raise_options(cli: Cli) -> None:
    _home_with_rows(cli)
    res = cli("budget", "show")
    assert "auto-raise $250.00 up to $3000.00; not raised this window" in res.out, res
    assert_error(cli("budget", "set", "--customer", "acme_corporation_worldwide", "--limit", "10", "--period",
                     "week", "--auto-raise", "5"), 2, "--ceiling: auto_raise needs a ceiling")
    assert_error(cli("budget", "set", "--customer", "acme_corporation_worldwide", "--limit", "10", "--period",
                     "week", "--auto-raise", "5", "--ceiling", "10"), 2, "--ceiling: must be above the limit")
    assert_error(cli("budget", "set", "--customer", "acme_corporation_worldwide", "--limit", "10", "--period",
                     "week", "--soft", "--auto-raise", "5", "--ceiling", "20"), 2, "--auto-raise: applies to hard")
    # off again with --auto-raise 0
    res = cli("budget", "set", "--customer", "acme_corporation_worldwide", "--limit", "1500", "--period", "month",
              "--auto-raise", "0", "--json")
    assert res.code == 0 and json.loads(res.out)["raise_step_nanos"] == 0 and json.loads(res.out)["ceiling_nanos"] == 0


def test_budget_set_fail_open(cli: Cli) -> None:
    _home_with_rows(cli)
    args = ("budget", "set", "--customer", "acme_corporation_worldwide", "--limit", "10", "--period", "week")
    res = cli(*args, "--fail-open", "--json")
    assert res.code == 0 and json.loads(res.out)["fail_open"] == 1, res
    res = cli(*args, "--json")  # an update keeps what is not given
    assert json.loads(res.out)["fail_open"] == 1
    assert json.loads(cli(*args, "--fail-closed", "--json").out)["fail_open"] == 0
    assert_error(cli(*args, "--soft", "--fail-open"), 2, "--fail-open")


def test_tail_fits_the_terminal(cli: Cli) -> None:
    import pty
    import sqlite3 as sq

    _home_with_rows(cli)
    conn = sq.connect(cli.home / "llmgw.db")
    kid = conn.execute("SELECT id FROM keys").fetchone()[0]
    with conn:
        conn.execute("INSERT INTO ledger (request_id, ts_ms, route, model, provider, status, outcome, error_type,"
                     " error_code, prompt_tokens, completion_tokens, cost_nanos, latency_ms, key_id, customer_id)"
                     " VALUES ('req_0123456789abcdef01', 1795000000000, 'chat', 'anthropic/claude-haiku-4-5-20251001',"
                     " 'anthropic', 429, 'error', 'budget_exceeded', 'month_budget_exceeded', 0, 0, 123456789, 2.5,"
                     " ?, 'acme_corporation_worldwide')", (kid,))
    conn.close()
    for width in (80, 120):
        main, sub = pty.openpty()
        environ = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        environ.update(LLMGW_HOME=str(cli.home), COLUMNS=str(width))
        proc = subprocess.run([sys.executable, "-m", "llmgw", "tail", "--no-follow"], env=environ, stdout=sub,
                              stderr=subprocess.PIPE, timeout=60)
        os.close(sub)
        chunks = []
        with contextlib.suppress(OSError):
            while data := os.read(main, 65536):
                chunks.append(data)
        os.close(main)
        assert proc.returncode == 0, proc.stderr
        lines = b"".join(chunks).decode().replace("\r\n", "\n").splitlines()
        assert len(lines) == 2, lines  # a header and the one request, on one line each
        assert all(len(line) <= width for line in lines), lines
        assert "$0.123456789" in lines[1] and "429" in lines[1]  # the cost is never cut
        if width == 120:
            assert "budget/mo" in lines[1] and "batch-caption" in lines[1] and "ms" in lines[1]
    # piped: every field, one line per request, no header (for scripts)
    res = cli("tail", "--no-follow", env={"COLUMNS": "80"})
    assert res.out.count("\n") == 1 and "req_0123456789abcdef01" in res.out and len(res.out) > 80


def test_readable_fields() -> None:
    import io

    from llmgw.cli.tables import print_fields, readable

    assert readable("saved_nanos", 150_000) == ("saved", "$0.00015")
    assert readable("oldest_ms", 1_795_000_000_000) == ("oldest", "2026-11-18T11:06:40Z")
    assert readable("latency_ms", 250) == ("latency_ms", "250")  # a duration stays a number
    assert readable("entries", 3) == ("entries", "3")
    buf = io.StringIO()
    print_fields({"entries": 2, "cost_nanos": 2_000_000_001, "newest_ms": None, "namespaces": ["a"]}, buf)
    assert buf.getvalue() == "entries: 2\ncost: $2.000000001\nnewest: -\n"
