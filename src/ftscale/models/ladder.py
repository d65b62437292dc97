"""Base-model ladders: build one into the cache (atomically), or reuse it; the public entry point.

A ladder is a set of base models along the study's two base-model axes: size (rungs) and
pretraining data (checkpoints of each rung after listed token counts). Two kinds:

* ``kind = "pretrain"`` (default): ftscale trains a byte-level BPE tokenizer on the built-in corpus
  and pretrains each rung (a Llama-style shape) from scratch with one shared recipe
  (:mod:`ftscale.models.build`);
* ``kind = "external"``: rungs are Hugging Face model ids or local paths, with revisions for the
  pretraining-data axis; sizes are read from the models (:mod:`ftscale.models.external`).

The config schema, cache keys and manifest readers live in :mod:`ftscale.models.ladder_config`
(no torch) and are re-exported here, so ``from ftscale.models.ladder import build_ladder,
load_config, read_ladder`` keeps working. Imports point one way: ``ladder_config`` <- ``build``,
``external`` <- ``ladder``; the two builders load lazily because they import torch.

A build checks its inputs and the cache location before it trains anything, happens in a sibling
temporary directory (``.tmp-...``) and is renamed into place only when complete; ``ladder.json`` is
written last, and no directory without it is a ladder.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import ftscale
from ftscale.common import write_json_atomic
from ftscale.errors import Interrupted, UserError
from ftscale.models.ladder_config import (
    CACHE_ENV,
    CODE_MODULES,
    LADDER_FILE,
    LADDER_FORMAT,
    MANIFEST_FILE,
    SHOW_COLUMNS,
    ExternalRungConfig,
    LadderConfig,
    OnCheckpoint,
    RecipeConfig,
    RevisionConfig,
    RungConfig,
    TokenizerConfig,
    cache_root,
    check_cache,
    code_fingerprint,
    config_key,
    entry_path,
    is_complete,
    ladder_summary,
    load_config,
    parse_config,
    read_ladder,
    resolve_ladder,
)

__all__ = [
    "CACHE_ENV", "CODE_MODULES", "LADDER_FILE", "LADDER_FORMAT", "MANIFEST_FILE", "SHOW_COLUMNS",
    "ExternalRungConfig", "LadderConfig", "OnCheckpoint", "RecipeConfig", "RevisionConfig",
    "RungConfig", "TokenizerConfig", "build_ladder", "cache_root", "check_cache",
    "code_fingerprint", "config_key", "entry_path", "is_complete", "ladder_summary",
    "load_config", "parse_config", "read_ladder", "resolve_ladder",
]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(final: Path) -> None:
    """Remove temporary build directories of ``final`` left by killed builds (dead pid)."""
    prefix = f".tmp-{final.name}-"
    if not final.parent.is_dir():
        return
    for tmp in final.parent.iterdir():
        if not tmp.name.startswith(prefix):
            continue
        try:
            pid = int(tmp.name.removeprefix(prefix).split("-")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_tokenizer_tmp(tokenizers: Path) -> None:
    """Remove half-saved tokenizers (``.tmp-bpe-<vocab>-<key>-<pid>-<random>``, written by
    :func:`ftscale.models.tokenizer.cached_bpe`) whose process is gone."""
    if not tokenizers.is_dir():
        return
    for tmp in tokenizers.glob(".tmp-bpe-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[1])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _check_run_settings(threads: int | None, workers: int | None) -> None:
    for name, value in (("threads", threads), ("workers", workers)):
        if value is not None and (isinstance(value, bool) or value < 0):
            raise UserError(f"{name} must be 0 (automatic) or a positive count, got {value!r}")


def build_ladder(
    config: LadderConfig,
    cache: str | Path | None = None,
    *,
    threads: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    on_checkpoint: OnCheckpoint | None = None,
    force: bool = False,
) -> tuple[Path, bool]:
    """Build the ladder for ``config`` in the cache, or reuse it; return ``(path, reused)``.

    ``threads`` and ``workers`` override ``config.threads`` and ``config.workers`` (0 or None:
    automatic, see :func:`ftscale.models.build.build_pretrained`). Before anything is written the
    run settings, the cache location (:func:`check_cache`) and what the recipe asks of the corpus
    (:func:`ftscale.models.build.prepare_pretraining`) are checked; a refusal is one
    :class:`UserError` line. The build happens in a temporary sibling directory renamed into
    place when complete; any exception or interrupt (Ctrl-C, SIGTERM, ``on_checkpoint`` raising)
    removes it and stops every worker process; an interrupt is re-raised as
    :class:`~ftscale.errors.Interrupted` saying what was kept. A kill leaves only a ``.tmp-``
    directory without ``ladder.json``, cleaned up by the next build. ``force`` rebuilds.
    """
    _check_run_settings(threads, workers)
    final = entry_path(config, cache)
    if is_complete(final) and not force:
        return final, True
    check_cache(cache)
    tokenizers = final.parent.parent / "tokenizers"
    prepared = _check_sources(config, tokenizers)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(final)
    _remove_stale_tokenizer_tmp(tokenizers)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        start = time.perf_counter()
        summary = _build_into(
            config, tmp, prepared, threads=threads, workers=workers, progress=progress,
            on_checkpoint=on_checkpoint,
        )
        summary.update(_build_facts(config, start))
        write_json_atomic(tmp / LADDER_FILE, summary)
        if _publish(tmp, final, force):
            return final, True
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(
                _kept(config, tokenizers), exit_code=getattr(exc, "exit_code", 130)
            ) from None
        raise
    return final, False


def _check_sources(config: LadderConfig, tokenizers: Path):
    """What the recipe asks of the corpus (pretrain ladders: the prepared pretraining, returned)
    or of the external models (checked, None returned); nothing is written."""
    if config.kind == "pretrain":
        from ftscale.models.build import prepare_pretraining

        return prepare_pretraining(config, tokenizers)
    from ftscale.models.external import check_external

    check_external(config)
    return None


def _build_into(
    config: LadderConfig, tmp: Path, prepared, *, threads, workers, progress, on_checkpoint
) -> dict:
    """Pretrain (``prepared`` given) or fetch the external ladder into ``tmp``; its summary."""
    if prepared is not None:
        from ftscale.models.build import build_pretrained

        return build_pretrained(
            config, tmp, prepared, threads=threads or config.threads or None,
            workers=workers or config.workers or None, progress=progress,
            on_checkpoint=on_checkpoint,
        )
    from ftscale.models.external import build_external

    return build_external(config, tmp, progress=progress, on_checkpoint=on_checkpoint)


def _build_facts(config: LadderConfig, start: float) -> dict:
    """What ``ladder.json`` records about the build beside the builder's summary."""
    return {
        "format": LADDER_FORMAT,
        "name": config.name,
        "key": config_key(config),
        "kind": config.kind,
        "ftscale_version": ftscale.__version__,
        "config": config.model_dump(mode="json"),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_wall_s": round(time.perf_counter() - start, 3),
    }


def _publish(tmp: Path, final: Path, force: bool) -> bool:
    """Rename the finished ``tmp`` into place; True when another process finished the same
    ladder first (``tmp`` is then removed and theirs reused)."""
    if force and final.exists():
        shutil.rmtree(final)
    try:
        os.rename(tmp, final)
    except OSError:
        if is_complete(final):  # another process finished the same ladder first
            shutil.rmtree(tmp, ignore_errors=True)
            return True
        raise
    return False


def _kept(config: LadderConfig, tokenizers: Path) -> str:
    """What an interrupted build leaves: never a partial ladder; maybe a finished tokenizer."""
    said = f"ladder {config.name} not built, its temporary folder removed"
    if config.kind == "pretrain":
        kept = tokenizers / f"bpe-{config.tokenizer.vocab_size}-"
        if any(p.name.startswith(kept.name) for p in tokenizers.glob("bpe-*")):
            return f"{said}; the trained tokenizer is kept in {tokenizers}"
    return said
