"""Small helpers every layer shares, one per idiom: the first line of an error, a validation error
as one line, reading a TOML file, atomic writes, and the thread/worker policy for CPU work.

Standard library only, so ``ftscale.laws`` (numpy/scipy only) and the CLI import it without cost.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none.

    Library errors (transformers, pandas, PEFT) often carry several lines or a traceback-like
    dump; a user sees only the line that names the problem.
    """
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def validation_problems(
    errors: list[dict[str, Any]], where: Callable[[str], str] | None = None
) -> str:
    """Every problem of a pydantic validation error (``exc.errors()``) on one line:
    ``field.path: problem (got VALUE)``, joined by ``; ``, unknown keys first (a misspelt key also
    makes the real one look missing, and the typo is the cause worth reading). ``where`` turns a
    field path into what the user typed (a CLI flag, a table key); a problem of the whole object
    has no path."""
    errors = sorted(errors, key=lambda e: e["type"] != "extra_forbidden")
    out: list[str] = []
    union_paths: set[str] = set()
    for err in errors:
        parts = [str(p) for p in err["loc"]]
        kept = [p for p in parts if not _is_type_tag(p)]
        path = ".".join(kept)
        if len(kept) < len(parts):  # one branch of a union: the first branch's problem is enough
            if path in union_paths:
                continue
            union_paths.add(path)
        if path and where is not None:
            path = where(path)
        message = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] not in ("missing", "extra_forbidden") and not isinstance(value, dict):
            message += f" (got {value!r})"
        line = f"{path}: {message}" if path else message
        if line not in out:
            out.append(line)
    return "; ".join(out)


def _is_type_tag(part: str) -> bool:
    """A part of a pydantic error location that names a union branch or a validator, not a
    field (``function-before[...]``, ``literal['max']``, ``dict[str,...]``)."""
    return part.startswith(("function-", "literal[")) or "[" in part


def read_toml(path: str | Path, kind: str) -> dict[str, Any]:
    """A TOML file of ``kind`` (``"ladder"``, ``"study"``: named in errors) as a dict; a
    one-line :class:`~ftscale.errors.UserError` for a folder, a missing file, bytes that are not
    UTF-8 text, an unreadable file or text that is not TOML."""
    import tomllib

    from ftscale.errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a {kind} TOML file")
    if not path.is_file():
        raise UserError(f"{path}: no such {kind} file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: cannot read: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or first_line(exc)}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {first_line(exc)}") from None


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder and an atomic
    rename: a reader, or a process killed mid-write, sees the old file or the new one, never half
    of one. The temporary file is removed on every failure path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as any other
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one (a container or
    ``taskset`` limits it), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def threads_per_worker(cores: int | None = None) -> int:
    """Torch threads for one worker process that runs beside others: 1 on a machine with at most
    2 cores (on 2 cores, two one-thread processes beat one two-thread process, and a two-thread
    process under any other load ran 2-10x slower; measured by ``benchmarks/bench_pretrain.py``),
    else half the cores, at most 4 (small models stop gaining from more threads)."""
    cores = usable_cores() if cores is None else cores
    if cores <= 2:
        return 1
    return min(4, cores // 2)


def default_workers(jobs: int, threads: int, cores: int | None = None) -> int:
    """Worker processes for ``jobs`` independent jobs at ``threads`` threads each: as many as fit
    the cores, at most one per job, at least 1."""
    cores = usable_cores() if cores is None else cores
    return max(1, min(jobs, cores // max(1, threads)))
