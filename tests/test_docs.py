"""The docs tell the truth about the command line, and keep telling it.

Driven by what it finds, so pages and commands added later are covered without editing this file:

* every ``ftscale ...`` command line in a ```bash block of README.md, docs/*.md and
  examples/README.md names a real sub-command and only options that command has;
* every ``--option`` in backticks in ``docs/<page>.md`` is an option of the commands that page
  covers (:data:`PAGES`), and every option of those commands is mentioned on the page;
* the cheap documented commands really run (exit 0): ``data show``, ``fit``/``critical`` on the
  shipped example table, ``ladder show`` of a ladder that is built, and ``--help`` of every
  command;
* the tables ``scripts/regen_docs.py`` writes are what the code produces today (the blocks that
  need no ladder build; the others when the default ladder is in the cache).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from ftscale.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted(
    p for p in [ROOT / "README.md", ROOT / "examples" / "README.md", *(ROOT / "docs").glob("*.md")]
    if p.is_file()
)
#: Which commands each docs page covers ("study *": every sub-command of `study`). Commands that
#: do not exist (yet) are left out; a page that does not exist is not checked.
PAGES: dict[str, tuple[str, ...]] = {
    "laws.md": ("fit", "critical"),
    "finetune.md": ("finetune",),
    "ladders.md": ("ladder build", "ladder show"),
    "data.md": ("data show",),
    "study.md": ("study *", "recommend", "report"),
}
#: Sub-commands cheap enough to run from the docs as written (seconds, no training).
RUNNABLE = ("data show", "fit", "critical", "ladder show")
#: Documented commands that would run for minutes are only validated, not run: a bootstrap above
#: this many refits is one of them.
MAX_RUN_BOOTSTRAP = 50
ROOT_COMMAND = typer.main.get_command(app)


def _is_group(cmd) -> bool:
    """A command group (typer ships its own copy of click, so no isinstance on click's class)."""
    return hasattr(cmd, "commands")


# --- the command tree ------------------------------------------------------------------------


def leaf_commands(group=ROOT_COMMAND, prefix: str = "") -> dict:
    """Every runnable sub-command by its full name (``"ladder build"``)."""
    out = {}
    for name, cmd in getattr(group, "commands", {}).items():
        full = f"{prefix}{name}"
        if _is_group(cmd):
            out.update(leaf_commands(cmd, full + " "))
        else:
            out[full] = cmd
    return out


COMMANDS = leaf_commands()


def options_of(cmd) -> dict[str, bool]:
    """Option spelling -> whether it takes a value, for every option of ``cmd`` (and --help)."""
    opts = {"--help": False}
    for param in cmd.params:
        if param.param_type_name == "option":
            takes = not (param.is_flag or param.count)
            for name in [*param.opts, *param.secondary_opts]:
                opts[name] = takes
    return opts


def primary_options(cmd) -> list[str]:
    """The long spelling of every option of ``cmd`` (``--force`` for ``--force/--no-force``)."""
    names = []
    for param in cmd.params:
        if param.param_type_name == "option":
            longs = [o for o in param.opts if o.startswith("--")]
            names.append(longs[0] if longs else param.opts[0])
    return names


# --- command lines in the docs ------------------------------------------------------------------

PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*([/:.@=-].*)?$")  # PATH, F, N, LADDER_DIR/m64/...
ANGLE = re.compile(r"<[A-Za-z0-9_.-]+>")  # tiny-<hash>
OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "<", "2>", "(", ")"}


@dataclass
class DocCommand:
    """One ``ftscale`` invocation found in a docs shell block."""

    doc: str
    line: int
    words: list[str]  # after "ftscale"
    redirected: bool = False
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: ftscale {' '.join(self.words)}"


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, body) of every ```bash / ```sh / ```shell / ```console block."""
    blocks = []
    for match in re.finditer(r"^```(?:bash|sh|shell|console)[ \t]*\n(.*?)^```", text,
                             re.DOTALL | re.MULTILINE):
        blocks.append((text[: match.start(1)].count("\n") + 1, match.group(1)))
    return blocks


def logical_lines(start: int, body: str) -> list[tuple[int, str]]:
    """Lines of a shell block with backslash continuations joined, comments kept for shlex."""
    out, pending, first = [], "", start
    for offset, raw in enumerate(body.splitlines()):
        if not pending:
            first = start + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        out.append((first, pending + raw))
        pending = ""
    if pending:
        out.append((first, pending))
    return out


def split_words(line: str) -> list[str]:
    lexer = shlex.shlex(ANGLE.sub("PLACEHOLDER", line), posix=True, punctuation_chars="();<>|&")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def doc_commands(path: Path) -> list[DocCommand]:
    """Every ``ftscale`` command line in the shell blocks of ``path``."""
    found = []
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    for start, body in shell_blocks(path.read_text(encoding="utf-8")):
        for number, line in logical_lines(start, body):
            words = split_words(line)
            segment: list[str] = []
            for word in [*words, ";"]:
                if word in OPERATORS:
                    if segment:
                        cmd = _as_ftscale(segment)
                        if cmd is not None:
                            redirected = word in (">", ">>")
                            found.append(DocCommand(rel, number, cmd, redirected=redirected))
                    segment = [] if word not in (">", ">>") else ["<redirect>"]
                else:
                    segment.append(word)
    return found


def _as_ftscale(segment: list[str]) -> list[str] | None:
    if segment[0] == "<redirect>":
        return None
    if Path(segment[0]).name == "ftscale":
        return segment[1:]
    if segment[:3] == ["python", "-m", "ftscale"] or (
        Path(segment[0]).name.startswith("python") and segment[1:3] == ["-m", "ftscale"]):
        return segment[3:]
    return None


ALL_DOC_COMMANDS = [c for path in DOC_FILES for c in doc_commands(path)]


def resolve(words: list[str]) -> tuple:
    """(name, command, remaining words) of a documented command line; fails naming the word
    that is not a sub-command."""
    group = ROOT_COMMAND
    names: list[str] = []
    rest = [w.strip("[]") for w in words]
    while _is_group(group):
        if not rest or rest[0].startswith("-") or PLACEHOLDER.match(rest[0]):
            return " ".join(names), group, rest  # `ftscale COMMAND --help`: any sub-command
        if rest[0] not in group.commands:
            raise AssertionError(f"{' '.join(names) or 'ftscale'}: no sub-command {rest[0]!r}")
        group = group.commands[rest[0]]
        names.append(rest.pop(0))
    return " ".join(names), group, rest


def check_options(cmd, words: list[str]) -> list[str]:
    """Positional words of a command line after checking every option in it exists (values of
    options that take one are skipped)."""
    known = options_of(cmd)
    positional = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word.startswith("-") and word != "-" and not re.match(r"^-\d", word):
            name = word.split("=", 1)[0]
            assert name in known, f"no option {name} (has: {', '.join(sorted(known))})"
            skip = known[name] and "=" not in word
        else:
            positional.append(word)
    return positional


def test_docs_have_ftscale_commands():
    """The finder itself: the pages are found and hold commands (else every test is vacuous)."""
    names = {p.name for p in DOC_FILES}
    assert {"README.md", "ladders.md", "data.md"} <= names
    commands = {resolve(c.words)[0] for c in ALL_DOC_COMMANDS}
    assert {"ladder build", "ladder show", "data show"} <= commands


def test_finder_parses_continuations_placeholders_and_redirections(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "```bash\n# a comment\nftscale fit T.csv --x p \\\n    --group m   # trailing\n"
        "x=1 && .venv/bin/ftscale data show builtin:en-de --split test > out.jsonl\n"
        "ftscale ladder show ~/.cache/ftscale/ladders/tiny-<hash> --json\n```\n"
        "```python\nftscale nosuch\n```\n", encoding="utf-8")
    found = doc_commands(page)
    assert [(c.line, c.words, c.redirected) for c in found] == [
        (3, ["fit", "T.csv", "--x", "p", "--group", "m"], False),
        (5, ["data", "show", "builtin:en-de", "--split", "test"], True),
        (6, ["ladder", "show", "~/.cache/ftscale/ladders/tiny-PLACEHOLDER", "--json"], False),
    ]
    with pytest.raises(AssertionError, match="no option --nosuch"):
        check_options(COMMANDS["fit"], ["t.csv", "--nosuch"])
    with pytest.raises(AssertionError, match="no sub-command 'nosuch'"):
        resolve(["ladder", "nosuch"])


@pytest.mark.parametrize("command", ALL_DOC_COMMANDS, ids=str)
def test_documented_command_line_is_valid(command):
    """(a) Each documented ``ftscale`` line names a real sub-command and real options."""
    try:
        name, cmd, rest = resolve(command.words)
        if _is_group(cmd):
            assert "--help" in rest or (rest and PLACEHOLDER.match(rest[0])), (
                f"{name or 'ftscale'}: needs a sub-command")
            return
        check_options(cmd, rest)
    except AssertionError as exc:
        pytest.fail(f"{command}: {exc}")


# --- options on each page -----------------------------------------------------------------------


def page_commands(page: str) -> dict:
    """The existing commands a docs page covers (see :data:`PAGES`)."""
    out = {}
    for pattern in PAGES[page]:
        if pattern.endswith(" *"):
            prefix = pattern[:-1]
            out.update({n: c for n, c in COMMANDS.items() if n.startswith(prefix)})
        elif pattern in COMMANDS:
            out[pattern] = COMMANDS[pattern]
    return out


PAGES_HERE = [p for p in PAGES if (ROOT / "docs" / p).is_file() and page_commands(p)]
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
BACKTICK = re.compile(r"`([^`]+)`")  # inline code, which may wrap over a line break


def inline_code(text: str) -> list[str]:
    """Inline code spans of a Markdown page (fenced blocks left out), whitespace collapsed."""
    return [" ".join(span.split()) for span in BACKTICK.findall(FENCE.sub("", text))]
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


@pytest.mark.parametrize("page", PAGES_HERE)
def test_options_in_backticks_exist(page):
    """(b) Every ``--option`` in backticks on a page is an option of a command the page covers;
    a backticked command line (``ftscale finetune --revision R`` or ``fit --form F``) is checked
    against its own command."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    covered = page_commands(page)
    union = {o for c in covered.values() for o in options_of(c)}
    bad = []
    for span in inline_code(text):
        words = span.split()
        if not words:
            continue
        if words[0] == "ftscale" or words[0] in ROOT_COMMAND.commands:  # a command line
            words = words[1:] if words[0] == "ftscale" else words
            try:
                _, cmd, rest = resolve([w for w in words if not PLACEHOLDER.match(w)])
                check_options(cmd, rest)
            except AssertionError as exc:
                bad.append(f"`{span}`: {exc}")
        elif words[0].startswith("-"):  # options of the page's commands
            bad += [f"`{span}`: {o}" for o in OPTION.findall(span) if o not in union]
        # else another program's command line (`python scripts/regen_docs.py --check`) or code
    assert not bad, f"docs/{page}: options that {sorted(covered)} do not have: {bad}"


@pytest.mark.parametrize("page", PAGES_HERE)
def test_every_option_is_documented(page):
    """(b) Every option of the commands a page covers is mentioned on it."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    missing = [
        f"{name} {opt}"
        for name, cmd in page_commands(page).items()
        for opt in primary_options(cmd)
        if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text)
    ]
    assert not missing, f"docs/{page} never mentions: {missing}"


# --- running what is cheap ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_of_every_command(name):
    """(c) ``--help`` of every command exits 0 and names each option."""
    result = CliRunner().invoke(app, [*name.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for opt in primary_options(COMMANDS[name]):
        assert opt in result.output, f"ftscale {name} --help does not show {opt}"


def _runnable(command: DocCommand, cwd: Path) -> str | None:
    """Why a documented command is not run here (None: run it)."""
    name, cmd, rest = resolve(command.words)
    if name not in RUNNABLE:
        return f"{name} is not cheap"
    if any(PLACEHOLDER.match(w) or "PLACEHOLDER" in w or w in ("...", "…") for w in rest):
        return "has placeholders"
    words = list(rest)
    if "--bootstrap" in words and int(words[words.index("--bootstrap") + 1]) > MAX_RUN_BOOTSTRAP:
        return "bootstrap too long to run in a test"
    for word in check_options(cmd, rest):
        path = Path(os.path.expanduser(word))
        looks_like_file = "/" in word or re.search(r"\.(csv|tsv|jsonl?|parquet|toml)$", word)
        if looks_like_file and not word.startswith(("builtin:", "hf:")) and not (
                (cwd / path).exists() or (path.is_absolute() and path.exists())):
            return f"needs {word}, not here"
    if name == "ladder show":
        from ftscale.errors import UserError
        from ftscale.models.ladder_config import resolve_ladder

        target = next(w for w in check_options(cmd, rest))
        try:
            resolve_ladder(cwd / target)
        except UserError:
            return "ladder not built here"
    return None


@pytest.mark.slow
def test_cheap_documented_commands_run(tmp_path):
    """(c) Documented commands that need no training run as written and exit 0, in a folder where
    the repository's ``examples/`` is at hand; the outputs they write land there. At least
    `data show` and `fit`/`critical` on the shipped table must be among them."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    runner = CliRunner()
    ran, skipped = [], []
    previous = Path.cwd()
    os.chdir(tmp_path)
    try:
        seen: set[tuple[str, ...]] = set()
        for command in ALL_DOC_COMMANDS:
            if tuple(command.words) in seen:  # the same line on two pages runs once
                continue
            seen.add(tuple(command.words))
            why = _runnable(command, tmp_path)
            if why:
                skipped.append(f"{command} ({why})")
                continue
            result = runner.invoke(app, command.words)
            assert result.exit_code == 0, f"{command}: exit {result.exit_code}\n{result.output}"
            ran.append(resolve(command.words)[0])
    finally:
        os.chdir(previous)
    assert "data show" in ran, skipped
    assert {"fit", "critical"} & set(ran), skipped


@pytest.mark.slow
def test_regenerated_tables_are_current():
    """The docs tables ``scripts/regen_docs.py`` writes match what the code gives now. Blocks
    that need the default ladder are checked when it is in the cache (the script says so)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "regen_docs.py"), "--check"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.returncode == 0, f"stale docs tables (run scripts/regen_docs.py):\n{proc.stderr}"
    assert "data-splits: up to date" in proc.stderr and "ladder-sizes: up to date" in proc.stderr
