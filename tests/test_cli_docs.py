"""The generated shell completions and man page (scripts/gen_cli_docs.py): committed files match what
the Typer app generates now, the man page renders cleanly, and the completions really complete in
bash (always), zsh and fish (when installed)."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import pytest
import typer

ROOT = Path(__file__).resolve().parent.parent
BASH = ROOT / "completions" / "llmgw.bash"
ZSH = ROOT / "completions" / "_llmgw"
FISH = ROOT / "completions" / "llmgw.fish"
MAN = ROOT / "man" / "llmgw.1"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="module")
def tree(gen: ModuleType) -> Any:
    return gen.command_tree()


# ---- freshness -----------------------------------------------------------------------------------


def test_committed_completions_and_man_page_are_fresh(gen: ModuleType) -> None:
    stale = [rel for rel, text in gen.artefacts().items()
             if not (ROOT / rel).exists() or (ROOT / rel).read_text(encoding="utf-8") != text]
    assert not stale, (f"generated files out of date with the Typer app: {', '.join(stale)}; "
                       "regenerate them with: python scripts/gen_cli_docs.py (and commit the result)")


def test_generation_is_deterministic(gen: ModuleType) -> None:
    assert gen.artefacts() == gen.artefacts()


def test_every_command_option_and_help_text_is_in_every_artefact(gen: ModuleType, tree: Any) -> None:
    files = gen.artefacts(tree)
    bash, zsh, fish, man = (files[k] for k in ("completions/llmgw.bash", "completions/_llmgw",
                                               "completions/llmgw.fish", "man/llmgw.1"))
    commands = tree.walk()
    paths = {c.key for c in commands}
    # the groups and commands the project has (more may come: the generator walks whatever exists)
    assert {"llmgw keys create", "llmgw doctor", "llmgw config validate", "llmgw budget set"} <= paths
    for cmd in commands[1:]:
        assert f'"{cmd.key}")' in bash, cmd.key
        assert gen.roff(" ".join(cmd.path)) in man, cmd.key
        assert gen.roff(gen.short_help(cmd.help, 10_000)) in man, cmd.key
        assert gen._fq("__llmgw_at " + gen._fq(cmd.key)) in fish, cmd.key
        assert gen._zfunc(cmd) + "()" in zsh, cmd.key
        for opt in cmd.options:
            for name in opt.all_names:
                assert name in bash and name in zsh, (cmd.key, name)
                assert gen.roff(name) in man or name in ("-h", "--help"), (cmd.key, name)
            if opt.help and "--help" not in opt.names:
                assert gen.roff(" ".join(opt.help.split())) in man, (cmd.key, opt.names)


def test_generator_picks_up_commands_it_has_never_seen(gen: ModuleType) -> None:
    """A new command group is in every artefact without touching the generator."""
    app = typer.Typer(name="llmgw", add_completion=False)
    widgets = typer.Typer(help="Manage widgets.")
    app.add_typer(widgets, name="widgets")

    @widgets.command()
    def polish(shine: Annotated[int, typer.Option("--shine", help="How much shine.")] = 1) -> None:
        """Polish a widget."""

    @app.command()
    def hello() -> None:
        """Say hello."""

    t = gen.command_tree(app)
    assert [c.key for c in t.walk()] == ["llmgw", "llmgw hello", "llmgw widgets", "llmgw widgets polish"]
    files = gen.artefacts(t)
    assert "--shine" in files["completions/llmgw.bash"] and "polish" in files["completions/llmgw.bash"]
    assert "How much shine." in files["man/llmgw.1"] and "Polish a widget." in files["completions/_llmgw"]
    assert "\\-\\-shine" in files["man/llmgw.1"] and "-l shine" in files["completions/llmgw.fish"]


def test_check_mode_reports_a_stale_file(gen: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for rel, text in gen.artefacts().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    assert gen.stale(tmp_path) == []
    (tmp_path / "man" / "llmgw.1").write_text("old\n", encoding="utf-8")
    assert gen.stale(tmp_path) == ["man/llmgw.1"]


# ---- man page ------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed (apt-get install groff-base)")
def test_man_page_is_clean_roff() -> None:
    """groff with every warning on (-ww) finds nothing to say about the page."""
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.skipif(shutil.which("man") is None, reason="man not installed (apt-get install man-db groff-base)")
def test_man_page_renders_with_man() -> None:
    # MAN_DISABLE_SECCOMP: man-db's sandbox refuses the semaphores libfaketime needs (the suite runs under it)
    env = {**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_DISABLE_SECCOMP": "1"}
    proc = subprocess.run(["man", "--warnings", "-l", str(MAN)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    out = proc.stdout
    for text in ("NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS", "llmgw keys create [OPTIONS]",
                 "--customer", "llmgw doctor [OPTIONS]", "LLMGW_HOME"):
        assert text in out, text


# ---- bash ----------------------------------------------------------------------------------------


def bash_complete(*lines: list[str]) -> list[list[str]]:
    """COMPREPLY for each command line (a list of words; the last is the one being completed)."""
    script = [f"source {shlex.quote(str(BASH))}"]
    for words in lines:
        script.append(f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
                      "_llmgw_completion; printf '%s\\n' \"${COMPREPLY[*]}\"")
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", "\n".join(script)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = proc.stdout.split("\n")[:-1]
    assert len(out) == len(lines), proc.stdout
    return [o.split() for o in out]


def test_bash_completes_commands_and_options() -> None:
    top, keys_opt, group, value, eq_value, value_after, after_value, leaf = bash_complete(
        ["llmgw", "ke"],
        ["llmgw", "keys", "create", "--cu"],
        ["llmgw", "keys", ""],
        ["llmgw", "report", "--by", "m"],
        ["llmgw", "report", "--format", "=", ""],
        ["llmgw", "--help", "budget", ""],
        ["llmgw", "tail", "--customer", "keys", "--j"],
        ["llmgw", "doctor", "--off"],
    )
    assert top == ["keys"]
    assert keys_opt == ["--customer"]
    assert group == ["create", "list", "show", "disable", "enable", "revoke", "rotate"]
    assert value == ["model"]
    assert eq_value == ["table", "json", "csv", "tsv"]
    assert value_after == ["set", "show", "delete"]
    assert after_value == ["--json"]  # "keys" was --customer's value, not the keys group
    assert leaf == ["--offline"]


def test_bash_completes_every_group_and_every_option(tree: Any) -> None:
    cases: list[tuple[str, list[str], list[str]]] = []
    for cmd in tree.walk():
        words = [*cmd.path, ""]
        if cmd.subcommands:
            cases.append((cmd.key, words, [s.path[-1] for s in cmd.subcommands]))
        cases.append((cmd.key + " -", [*cmd.path, "-"], [n for o in cmd.options for n in o.all_names]))
    results = bash_complete(*(w for _, w, _ in cases))
    for (what, _, expected), got in zip(cases, results, strict=True):
        assert got == expected, what


# ---- zsh and fish (when installed) ---------------------------------------------------------------


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_completion_parses() -> None:
    proc = subprocess.run(["zsh", "-n", str(ZSH)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


# Drives a real interactive zsh through zpty: compinit with completions/ on $fpath, TAB, and a
# compadd wrapper that prints each match (after Valodim/zsh-capture-completion).
ZSH_CAPTURE = r"""
zmodload zsh/zpty
zpty z zsh -f -i
local line
setopt rcquotes
() {
    zpty -w z source $1
    repeat 4; do
        zpty -r z line
        [[ $line == ok* ]] && return
    done
    echo 'error initializing.' >&2
    exit 2
} =( <<< '
PROMPT=
fpath=('$FPATH_DIR' $fpath)
autoload -U compinit
compinit -u -d '$DUMP'
bindkey ''^M'' undefined
bindkey ''^J'' undefined
bindkey ''^I'' complete-word
null-line () { echo -E - $''\0'' }
compprefuncs=( null-line )
comppostfuncs=( null-line exit )
zstyle '':completion:*'' list-grouped false
zstyle '':completion:*'' insert-tab false
zstyle '':completion:*'' list-separator ''''
compadd () {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then
        builtin compadd "$@"
        return $?
    fi
    typeset -a __hits
    builtin compadd -A __hits "$@"
    [[ -n $__hits ]] || return
    for i in {1..$#__hits}; do
        echo -E - $IPREFIX$__hits[$i]
    done
}
echo ok')
zpty -w z "$LINE"$'\t'
integer tog=0
while zpty -r z; do :; done | while IFS= read -r line; do
    if [[ $line == *$'\0\r' ]]; then
        (( tog++ )) && return 0 || continue
    fi
    (( tog )) && echo -E - ${line%$'\r'}
done
return 2
"""


def zsh_complete(line: str, tmp_path: Path) -> list[str]:
    script = tmp_path / "capture.zsh"
    script.write_text(textwrap.dedent(ZSH_CAPTURE))
    env = {**os.environ, "FPATH_DIR": str(ROOT / "completions"), "DUMP": str(tmp_path / "zcompdump"),
           "LINE": line, "HOME": str(tmp_path)}
    proc = subprocess.run(["zsh", "-f", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_completes_commands_and_options(tmp_path: Path) -> None:
    assert zsh_complete("llmgw ke", tmp_path) == ["keys"]
    assert zsh_complete("llmgw keys create --cu", tmp_path) == ["--customer"]
    assert zsh_complete("llmgw report --by ", tmp_path) == ["customer", "team", "key", "model", "provider"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_fish_completion_parses() -> None:
    proc = subprocess.run(["fish", "--no-config", "-n", str(FISH)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def fish_complete(line: str) -> list[str]:
    proc = subprocess.run(["fish", "--no-config", "-c", f"source {shlex.quote(str(FISH))}; complete -C {shlex.quote(line)}"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [row.split("\t")[0] for row in proc.stdout.splitlines()]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_fish_completes_commands_and_options() -> None:
    assert fish_complete("llmgw ke") == ["keys"]
    assert fish_complete("llmgw keys create --cu") == ["--customer"]
    assert sorted(fish_complete("llmgw report --format ")) == ["csv", "json", "table", "tsv"]
    assert fish_complete("llmgw tail --customer keys --j") == ["--json"]
    assert "rotate" in fish_complete("llmgw keys ")
