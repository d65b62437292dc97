"""What one worker does with one task: a finetuning run or a learning-rate search.

Both take JSON text (the run spec) and return plain dicts, so the same functions run in this
process, in a spawned worker process or as a Ray task, and only the driver writes the store. A run
that fails (bad model path, NaN loss, out of memory) comes back as ``status = "failed"`` with a
one-line ``error``: a failed run never stops a sweep.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from ftscale.common import first_line


def set_threads(threads: int | None) -> None:
    """Pin torch to ``threads`` CPU threads (None: leave as is), quiet library progress bars, and
    apply the finetuning memory policy (:mod:`ftscale.finetune.memory`), as ``ftscale finetune``
    does."""
    import os

    from ftscale.finetune.memory import return_freed_memory

    return_freed_memory()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)


def execute(spec_json: str, threads: int | None = None) -> dict[str, Any]:
    """Run one job; ``{"status", "record", "error", "wall_s"}`` (never raises for a run's own
    failure; KeyboardInterrupt propagates)."""
    from ftscale.finetune.recipe import run_job
    from ftscale.finetune.spec import FinetuneJob

    set_threads(threads)
    start = time.perf_counter()
    try:
        job = FinetuneJob.from_json(spec_json)
        if threads:
            job = job.replace(threads=threads)
        record = run_job(job).to_dict()  # its key is the stored one: threads are not in keys
        status = record.get("status", "ok")
        error = record.get("reason") if status != "ok" else None
    except Exception as exc:  # a run's failure is data, not a crash of the sweep
        record, status = None, "failed"
        error = f"{type(exc).__name__}: {first_line(exc)}"
        if not _is_user_error(exc):
            error += " @ " + _where(exc)
    return {
        "status": "ok" if status == "ok" else "failed",
        "record": record,
        "error": error,
        "wall_s": round(time.perf_counter() - start, 3),
    }


def search(spec_json: str, threads: int | None = None) -> dict[str, Any]:
    """The learning-rate search of one representative job (``learning_rate = "auto"``);
    ``{"status", "search", "error", "wall_s"}``."""
    from ftscale.finetune.recipe import search_job
    from ftscale.finetune.spec import FinetuneJob

    set_threads(threads)
    start = time.perf_counter()
    try:
        result = search_job(FinetuneJob.from_json(spec_json))
        out = {"status": "ok", "search": result.to_dict(), "error": None}
    except Exception as exc:
        out = {
            "status": "failed",
            "search": None,
            "error": f"{type(exc).__name__}: {first_line(exc)}",
        }
    out["wall_s"] = round(time.perf_counter() - start, 3)
    return out


def _is_user_error(exc: BaseException) -> bool:
    from ftscale.errors import UserError

    return isinstance(exc, UserError)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"


#: Task kinds an executor can be asked to run, by name (picklable across processes and Ray).
TASKS = {"run": execute, "search": search}


def perform(kind: str, spec_json: str, threads: int | None) -> dict[str, Any]:
    """Run a task of ``kind`` (``run`` or ``search``)."""
    return TASKS[kind](spec_json, threads)
