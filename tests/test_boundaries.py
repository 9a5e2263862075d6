"""Import boundaries, checked in a fresh interpreter: the core never imports a front end or a heavy
library, and the CLI entry point stays light so that ``llmgw --help`` is fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

FRONT_ENDS_AND_HEAVY = ("textual", "model2vec", "usearch", "numpy", "typer", "rich")
HEAVY = ("textual", "model2vec", "usearch", "numpy")


def loaded_after(code: str, watch: tuple[str, ...], tmp_path: Path) -> list[str]:
    """Run ``code`` in a fresh interpreter; the modules of ``watch`` it left in ``sys.modules``."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        sys.__stdout__.write(json.dumps(sorted(m for m in {watch!r} if m in sys.modules)))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("LLMGW_CONFIG", "LLMGW_HOME")}
    env["LLMGW_HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_core_imports_no_front_end_and_no_heavy_library(tmp_path: Path) -> None:
    loaded = loaded_after("import llmgw.gateway, llmgw.server.app, llmgw.config, llmgw.pricing\n",
                          FRONT_ENDS_AND_HEAVY, tmp_path)
    assert loaded == []


def test_cli_entry_point_does_not_import_the_server_stack(tmp_path: Path) -> None:
    loaded = loaded_after("import llmgw.cli.main\n", ("aiohttp", *HEAVY), tmp_path)
    assert loaded == []


def test_help_and_keys_list_stay_light(tmp_path: Path) -> None:
    """Rendering ``--help`` and running ``keys list`` load neither aiohttp nor a heavy library.

    The database exists already (the normal case): creating it runs the migrations through
    sqlite-utils, which imports numpy when numpy is installed; that happens once per home.
    """
    from llmgw.store import db

    db.open_db(tmp_path / "home" / "llmgw.db").close()
    code = """
        import contextlib, io
        from llmgw.cli.main import main
        with contextlib.redirect_stdout(io.StringIO()):
            main(["--help"])
            main(["config", "--help"])
            main(["keys", "list", "--json"])
    """
    loaded = loaded_after(code, ("aiohttp", *HEAVY), tmp_path)
    assert loaded == []
