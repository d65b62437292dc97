"""Helpers of the study tests: the smoke study as a dict, a small TOML writer, the CLI in a
subprocess, and the session study's design.

Every study here uses the smoke study's inline ladder, so the ladder is pretrained once per
session (in a temporary cache) and reused.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "src" / "ftscale" / "study" / "configs" / "smoke.toml"


def smoke_config() -> dict:
    return tomllib.loads(SMOKE.read_text(encoding="utf-8"))


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in (nested tables merged, other values replaced)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_value(v)}' for k, v in value.items()) + "}"
    return repr(value)


def to_toml(data: dict, prefix: str = "") -> str:
    """A small TOML writer for test configs: scalars and lists first, then tables (every dict)
    and arrays of tables (lists of dicts)."""
    lines, tables, arrays = [], [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{key} = {_value(value)}")
    for key, value in tables:
        lines.append(f"[{prefix}{key}]")
        lines.append(to_toml(value, f"{prefix}{key}."))
    for key, items in arrays:
        for item in items:
            lines.append(f"[[{prefix}{key}]]")
            lines.append(to_toml(item, f"{prefix}{key}."))
    return "\n".join(lines) + "\n"


def write_study(path: Path, changes: dict, pet_sizes: dict | None = None) -> Path:
    """Write the smoke study with ``changes`` merged in (``pet_sizes`` replaces the PET sizes)."""
    data = merged(smoke_config(), changes)
    if "methods" in changes:  # the methods are replaced, not merged
        data["methods"] = copy.deepcopy(changes["methods"])
    if pet_sizes is not None:
        data["sweeps"]["pet_size"]["sizes"] = pet_sizes
    text = to_toml(data)
    assert tomllib.loads(text) == data, "test TOML writer lost something"
    path.write_text(text, encoding="utf-8")
    return path


#: Training for the studies that test the machinery (resume, kills, executors), not convergence:
#: a fixed budget of two epochs (at least 4 steps) with two dev checks, a few seconds a run.
QUICK_TRAIN = {"schedule": "cosine", "epochs": 2.0, "min_steps": 4, "evals": 2}

#: The session study: the smoke study trimmed to keep the tests within budget.
SESSION_CHANGES = {
    "name": "teststudy",
    "sweeps": {"pretraining": {"methods": ["fmt"]}},
    "run": {"executor": "process"},
    "task": {"shots": 1, "eval_examples": 8},
    "evals": [{"name": "fr-de", "spec": "builtin:fr-de"}],
}


def cli(args: list[str], cwd: Path, env_cache: Path, timeout: float = 900):
    env = {**os.environ, "FTSCALE_CACHE": str(env_cache), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "ftscale", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
