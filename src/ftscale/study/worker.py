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
    """Pin torch to ``threads`` CPU threads (None: leave as is) and quiet library progress bars,
    as ``ftscale finetune`` does (each run sets the allocator for its model:
    :func:`ftscale.finetune.memory.set_allocator`)."""
    import os

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


def pack(specs_json: str, threads: int | None = None) -> dict[str, Any]:
    """Several jobs (a JSON list of specs) trained as one pack
    (:func:`ftscale.finetune.packing.run_pack`): ``{"status", "outcomes", "error", "wall_s"}``
    with ``outcomes`` one per job, in order, as :func:`execute` gives for a job alone. A pack
    that cannot even start (a bad spec among its jobs) runs its jobs one by one, so each fails
    or succeeds on its own."""
    import json

    from ftscale.finetune.packing import run_pack
    from ftscale.finetune.spec import FinetuneJob

    set_threads(threads)
    specs = json.loads(specs_json)
    start = time.perf_counter()
    try:
        jobs = [FinetuneJob.from_json(spec) for spec in specs]
        if threads:
            jobs = [job.replace(threads=threads) for job in jobs]
        records = [r.to_dict() for r in run_pack(jobs)]
    except Exception:  # isolate the failure: each job on its own
        outcomes = [execute(spec, threads) for spec in specs]
        return {"status": "ok", "outcomes": outcomes, "error": None, "wall_s": _since(start)}
    wall = _since(start)
    outcomes = [
        {
            "status": "ok" if record.get("status", "ok") == "ok" else "failed",
            "record": record,
            "error": record.get("reason") if record.get("status", "ok") != "ok" else None,
            "wall_s": wall,
        }
        for record in records
    ]
    return {"status": "ok", "outcomes": outcomes, "error": None, "wall_s": wall}


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


#: Task kinds an executor can be asked to run, by name (picklable across processes and Ray).
TASKS = {"run": execute, "search": search, "pack": pack}


def perform(kind: str, spec_json: str, threads: int | None) -> dict[str, Any]:
    """Run a task of ``kind`` (``run``, ``search`` or ``pack``)."""
    return TASKS[kind](spec_json, threads)
