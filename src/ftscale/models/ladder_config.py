"""Ladder configs, the cache layout and the manifests of built ladders (no torch).

This module is what every other part of :mod:`ftscale.models` builds on; it imports none of them.
It holds the TOML schema (:class:`LadderConfig`, validated with pydantic so an error names the
field), the cache key of a config and where its ladder lives (:func:`entry_path`), the check that a
cache location is usable (:func:`check_cache`), and the readers of a built ladder
(:func:`read_ladder`, :func:`ladder_summary`). Building a ladder (tokenizer, pretraining, external
models) is :func:`ftscale.models.ladder.build_ladder`, which imports this module and
:mod:`ftscale.models.build` / :mod:`ftscale.models.external`; imports point one way.

A built ladder is a directory in the cache, ``<cache>/ladders/<name>-<hash>``, named by a hash of
the config (minus run-time settings such as threads), the corpus fingerprint, the source of the
pretraining code and the ladder format version, so an unchanged config is reused. Layout::

    <entry>/ladder.json                       # config, hash, checkpoints, timings
    <entry>/tokenizer/                        # the shared tokenizer (transformers format)
    <entry>/<rung>/tokens-<n>/                # HF model + tokenizer + manifest.json

Tokenizers are also kept in ``<cache>/tokenizers/bpe-<vocab>-<corpus fingerprint>`` and shared by
ladders of equal vocabulary.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import ftscale
from ftscale.common import read_toml, validation_problems
from ftscale.errors import UserError

#: Version of the on-disk ladder layout and of the pretraining code; part of every cache key.
LADDER_FORMAT = 1
#: Environment variable overriding the cache root.
CACHE_ENV = "FTSCALE_CACHE"
#: Name of the top-level manifest that marks a complete ladder directory.
LADDER_FILE = "ladder.json"
#: Name of the per-checkpoint manifest.
MANIFEST_FILE = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenizerConfig(_Strict):
    """Tokenizer of a pretrained ladder: byte-level BPE with ``vocab_size`` tokens."""

    vocab_size: Annotated[int, Field(ge=260, le=262144)] = 2048


class RecipeConfig(_Strict):
    """Shared pretraining recipe: budget (tokens), batch (sequences), schedule, checkpoints."""

    tokens: Annotated[int, Field(gt=0)]
    batch_size: Annotated[int, Field(gt=0)] = 16
    seq_len: Annotated[int, Field(ge=8)] = 128
    lr: Annotated[float, Field(gt=0)] = 3e-3
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.05
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    seed: int = 0
    checkpoints: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    val_tokens: Annotated[int, Field(gt=0)] = 32768

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimiser step consumes: ``batch_size * seq_len``."""
        return self.batch_size * self.seq_len

    @model_validator(mode="after")
    def _budget_is_honourable(self) -> RecipeConfig:
        # A ladder records the tokens each checkpoint saw; a step sees a whole batch, so a budget
        # or checkpoint below one batch could only be honoured by training more than asked.
        batch = (f"one batch (batch_size {self.batch_size:,} x seq_len {self.seq_len:,} = "
                 f"{self.tokens_per_step:,} tokens)")
        if self.tokens < self.tokens_per_step:
            raise ValueError(f"tokens {self.tokens:,} is less than {batch}")
        for t in self.checkpoints:
            if t > self.tokens:
                raise ValueError(f"checkpoint {t} tokens is beyond the budget of {self.tokens}")
            if t < self.tokens_per_step:
                raise ValueError(f"checkpoint {t:,} tokens is less than {batch}")
        if self.val_tokens < self.seq_len:
            raise ValueError(
                f"val_tokens {self.val_tokens:,} is less than one block of seq_len "
                f"{self.seq_len:,} tokens"
            )
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise ValueError("checkpoints are not distinct")
        return self


class RungConfig(_Strict):
    """One pretrained rung: a Llama-style shape (width = model dim, layers, heads, FFN width)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    width: Annotated[int, Field(gt=0)]
    layers: Annotated[int, Field(gt=0)]
    heads: Annotated[int, Field(gt=0)]
    ffn: Annotated[int, Field(gt=0)]

    @model_validator(mode="after")
    def _heads_divide_width(self) -> RungConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self


class RevisionConfig(_Strict):
    """One checkpoint of an external model: a git revision (branch, tag, commit) and, if known,
    the pretraining tokens it had seen (tokens)."""

    revision: str
    tokens: Annotated[int, Field(gt=0)] | None = None


class ExternalRungConfig(_Strict):
    """One external rung: a Hugging Face model id or a local directory, with optional revisions
    (the pretraining-data axis); without revisions the default revision is the only checkpoint."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    model: str
    revisions: list[RevisionConfig] = Field(default_factory=list)
    tokens: Annotated[int, Field(gt=0)] | None = None


class LadderConfig(_Strict):
    """A ladder TOML file. ``threads`` (torch threads per rung) and ``workers`` (rungs pretrained
    at once, in separate processes) are run-time settings, 0 = automatic, not in the cache key."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    kind: Literal["pretrain", "external"] = "pretrain"
    corpus: Literal["builtin:bible"] = "builtin:bible"
    threads: Annotated[int, Field(ge=0)] = 0
    workers: Annotated[int, Field(ge=0)] = 0
    tokenizer: TokenizerConfig = TokenizerConfig()
    recipe: RecipeConfig | None = None
    rungs: list[RungConfig] = Field(default_factory=list)
    external: list[ExternalRungConfig] = Field(default_factory=list)
    val_tokens: Annotated[int, Field(ge=0)] = 0

    @field_validator("rungs", "external")
    @classmethod
    def _unique_names(cls, rungs: list) -> list:
        names = [r.name for r in rungs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rung name {dup[0]!r} used twice")
        return rungs

    @model_validator(mode="after")
    def _kind_matches(self) -> LadderConfig:
        if self.kind == "pretrain":
            if self.recipe is None:
                raise ValueError("a pretrain ladder needs a [recipe] table")
            if not self.rungs:
                raise ValueError("a pretrain ladder needs at least one [[rungs]] entry")
            if self.external:
                raise ValueError("[[external]] entries need kind = \"external\"")
        else:
            if not self.external:
                raise ValueError("an external ladder needs at least one [[external]] entry")
            if self.rungs:
                raise ValueError("[[rungs]] shapes need kind = \"pretrain\"")
        return self


def load_config(path: str | Path) -> LadderConfig:
    """Read and validate a ladder TOML file; one-line :class:`UserError` naming file and field."""
    raw = read_toml(path, "ladder")
    return parse_config(raw, str(path))


def parse_config(raw: dict, origin: str = "ladder") -> LadderConfig:
    """Validate a ladder config given as a dict (the parsed TOML)."""
    try:
        return LadderConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{origin}: {validation_problems(exc.errors())}") from None


def cache_root(override: str | Path | None = None) -> Path:
    """The cache root: ``override``, else ``$FTSCALE_CACHE``, else ``$XDG_CACHE_HOME/ftscale``,
    else ``~/.cache/ftscale``."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ftscale"


def check_cache(cache: str | Path | None = None) -> Path:
    """The cache root (see :func:`cache_root`) after checking that a build can write there:
    neither it nor its ``ladders``/``tokenizers`` folders is a file, and the nearest existing one
    is writable. Raises a one-line :class:`UserError` naming the path; writes nothing."""
    root = cache_root(cache)
    where = f"cache {root}"
    for folder in (root, root / "ladders", root / "tokenizers"):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{where}: {folder} is a file, not a folder")
    for folder in (root / "ladders", root / "tokenizers"):
        existing = folder
        while not existing.exists():
            if existing.is_symlink():  # a dangling link: mkdir would fail on it
                raise UserError(f"{where}: {existing} is a broken link")
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"{where}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"{where}: cannot write in {existing} (permission denied or read-only)")
    return root


#: Modules whose source decides what a pretrained ladder contains (its weights and texts).
CODE_MODULES = ("ftscale.models.pretrain", "ftscale.models.tokenizer", "ftscale.data.corpus")


def code_fingerprint() -> str:
    """SHA-256 (16 hex digits) of the source of :data:`CODE_MODULES`: any change to the
    pretraining, tokenizer or corpus code gives new cache keys."""
    import importlib.util

    digest = hashlib.sha256()
    for name in CODE_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _corpus_fingerprint() -> str:
    """The built-in corpus's fingerprint, computed once per process (it reads the whole
    pretraining text; a study asks for its ladder's key several times)."""
    from ftscale.data.corpus import corpus_fingerprint

    return corpus_fingerprint()


def config_key(config: LadderConfig) -> str:
    """The cache key of a ladder: a SHA-256 (16 hex digits) of the config without run-time fields,
    the corpus and code fingerprints (pretrain ladders), the ladder format and ftscale version."""
    payload = config.model_dump(mode="json", exclude={"threads", "workers"})
    if config.kind == "pretrain":
        payload["corpus_fingerprint"] = _corpus_fingerprint()
        payload["code_fingerprint"] = code_fingerprint()
    payload["ladder_format"] = LADDER_FORMAT
    payload["ftscale_version"] = ftscale.__version__
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry_path(config: LadderConfig, cache: str | Path | None = None) -> Path:
    """Where the ladder for ``config`` lives (or would live) in the cache."""
    return cache_root(cache) / "ladders" / f"{config.name}-{config_key(config)}"


def is_complete(path: str | Path) -> bool:
    """True when ``path`` is a complete ladder directory (has a readable ``ladder.json``)."""
    try:
        json.loads((Path(path) / LADDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


#: Called after each checkpoint is written inside the temporary build directory:
#: (rung name, tokens_seen, checkpoint directory).
OnCheckpoint = Callable[[str, int, Path], None]


#: Columns of ``ftscale ladder show`` (every row of :func:`read_ladder` has them): parameters
#: counted as in :func:`ftscale.models.pretrain.count_params`, losses in nats per token, ``path``
#: and ``revision`` what ``from_pretrained`` needs (revision ``None`` for a local build).
SHOW_COLUMNS = (
    "rung", "tokens_seen", "total_params", "nonembedding_params", "train_loss", "val_loss", "path",
    "revision",
)


def resolve_ladder(path: str | Path, cache: str | Path | None = None) -> Path:
    """A ladder directory from ``path``: the directory itself, or the cache entry of a ladder TOML
    file (which must already be built)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".toml":
        config = load_config(path)
        entry = entry_path(config, cache)
        if not is_complete(entry):
            raise UserError(f"{path}: ladder not built yet (run `ftscale ladder build {path}`)")
        return entry
    if not path.exists():
        raise UserError(f"{path}: no such ladder directory or file")
    if not path.is_dir():
        raise UserError(f"{path}: is a file, expected a ladder directory or a ladder .toml file")
    if not is_complete(path):
        raise UserError(f"{path}: not a complete ladder (no readable {LADDER_FILE})")
    return path


def _read_summary(root: Path) -> dict:
    """``ladder.json`` of a complete ladder, checked to be an object listing its checkpoint
    folders (a hand-edited or foreign file is named, field and value, not crashed on)."""
    where = root / LADDER_FILE
    summary = json.loads(where.read_text(encoding="utf-8"))
    if not isinstance(summary, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(summary).__name__}")
    checkpoints = summary.get("checkpoints")
    if not isinstance(checkpoints, list) or not all(isinstance(c, str) for c in checkpoints):
        raise UserError(
            f"{where}: field 'checkpoints' is {checkpoints!r:.60}, expected a list of folder names"
        )
    return summary


def read_ladder(path: str | Path, cache: str | Path | None = None) -> list[dict]:
    """Every checkpoint of a built ladder as a dict (its manifest), rungs in config order and
    checkpoints by tokens seen; ``path`` is absolute (an id for hub models)."""
    root = resolve_ladder(path, cache)
    rows = []
    for rel in _read_summary(root)["checkpoints"]:
        manifest_path = root / rel / MANIFEST_FILE
        try:
            row = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"{manifest_path}: missing or unreadable manifest") from None
        if not isinstance(row, dict):
            raise UserError(f"{manifest_path}: expected a JSON object")
        if row.get("source") in (None, "local-build"):
            row["path"] = str((root / rel).resolve())
        rows.append(row)
    return rows


def ladder_summary(path: str | Path, cache: str | Path | None = None) -> dict:
    """The top-level ``ladder.json`` of a built ladder (config, key, timings per rung)."""
    return _read_summary(resolve_ladder(path, cache))
