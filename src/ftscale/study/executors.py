"""Executors: how a study's tasks run. Registered by name; ``ftscale study run --executor NAME``.

An executor takes tasks ``(task_id, kind, spec_json)`` and yields ``(task_id, outcome)`` as each
finishes, in any order; the driver writes each outcome to the store as it arrives. Built in:

* ``local``: one task after another in this process (the default; simplest to debug);
* ``process``: a pool of spawned worker processes, one torch thread each by default (on a small
  CPU, parallel one-thread processes beat one multi-thread process; see
  :func:`ftscale.common.threads_per_worker`);
* ``ray``: each task a Ray task with ``num_cpus``/``num_gpus`` requests, on a local Ray instance
  or a cluster (``--address``); needs the ``ray`` extra.

Register another with :func:`register_executor`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ftscale.errors import UserError

Task = tuple[str, str, str]  # (task id, kind: "run" | "search", spec JSON)


@dataclass
class ExecutorOptions:
    """Run-time settings every executor gets (0 / None = automatic)."""

    workers: int = 0
    threads: int = 0
    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0


class Executor:
    """Base class: ``map(tasks)`` yields ``(task_id, outcome)`` as tasks finish; ``close()``
    stops whatever is still running (called on Ctrl-C too)."""

    name = "base"

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options

    def map(self, tasks: Sequence[Task]) -> Iterator[tuple[str, dict[str, Any]]]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop outstanding work (nothing to do for the local executor)."""

    def describe(self, n_tasks: int) -> str:
        return self.name


_EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(name: str) -> Callable[[type[Executor]], type[Executor]]:
    """Class decorator registering an :class:`Executor` under ``name``."""

    def wrap(cls: type[Executor]) -> type[Executor]:
        cls.name = name
        _EXECUTORS[name] = cls
        return cls

    return wrap


def available_executors() -> list[str]:
    return sorted(_EXECUTORS)


def make_executor(name: str, options: ExecutorOptions) -> Executor:
    """The executor registered as ``name`` (one-line error for an unknown name)."""
    if name not in _EXECUTORS:
        raise UserError(f"executor {name!r} unknown (known: {', '.join(available_executors())})")
    return _EXECUTORS[name](options)


def _threads(options: ExecutorOptions) -> int:
    from ftscale.common import threads_per_worker

    return options.threads or threads_per_worker()


@register_executor("local")
class LocalExecutor(Executor):
    """Tasks one after another in this process."""

    def map(self, tasks):
        from ftscale.study.worker import perform

        threads = self.options.threads or None
        for task_id, kind, spec in tasks:
            yield task_id, perform(kind, spec, threads)

    def describe(self, n_tasks: int) -> str:
        return "local (sequential)"


@register_executor("process")
class ProcessExecutor(Executor):
    """A pool of spawned worker processes (``spawn``: no state of the driver is inherited, and
    torch is safe to use in each).

    A worker that dies (killed, out of memory) breaks the whole pool: Python fails every task
    still in it. Only the run it was running is at fault, so the pool is started again: the
    tasks that may have been in the dead worker (the first ``workers + 1`` unfinished, since a
    pool hands tasks out in order and queues one ahead) each run alone in a pool of their own,
    where a death is that run's (a failed run, ``worker died``), then the rest go on in a new
    pool. One bad run fails alone; a sweep never stops for it."""

    pool = None
    #: What a worker calls with ``(kind, spec, threads)`` (None: :func:`ftscale.study.worker.
    #: perform`); a module-level function, since spawned workers import it by name.
    target: Callable[[str, str, int], dict[str, Any]] | None = None

    def workers(self, n_tasks: int) -> int:
        from ftscale.common import default_workers

        threads = _threads(self.options)
        return self.options.workers or default_workers(max(1, n_tasks), threads)

    def map(self, tasks):
        if not tasks:
            return
        threads = _threads(self.options)
        queue = list(tasks)
        try:
            while queue:
                workers = self.workers(len(queue))
                if not (yield from self._round(queue, workers, threads)):
                    return
                suspects, queue[:] = queue[: workers + 1], queue[workers + 1 :]
                for task in suspects:
                    if (yield from self._round([task], 1, threads)):
                        yield task[0], _died("the worker running it alone died")
        finally:
            self.close()

    def _round(self, queue: list[Task], workers: int, threads: int):
        """Run ``queue`` in a new pool of ``workers``, yielding outcomes and removing finished
        tasks from ``queue``; returns True when the pool broke (a worker died), with the
        unfinished tasks left in ``queue``."""
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        from ftscale.study.worker import perform

        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=watch_parent, initargs=(os.getpid(),)
        )
        target = self.target or perform
        pending = {self.pool.submit(target, task[1], task[2], threads): task for task in queue}
        broken = False
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                task = pending.pop(future)
                if isinstance(future.exception(), BrokenProcessPool):
                    broken = True
                    continue
                queue.remove(task)
                yield task[0], _outcome(future)
        self.close()
        return broken

    def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            for process in list(getattr(pool, "_processes", {}).values()):
                if process.is_alive():
                    process.terminate()  # our own workers: a Ctrl-C must not wait for runs
            pool.shutdown(wait=True, cancel_futures=True)

    def describe(self, n_tasks: int) -> str:
        return f"process ({self.workers(n_tasks)} workers x {_threads(self.options)} thread)"


def watch_parent(parent: int, every_s: float = 1.0) -> None:
    """Worker initializer: exit when the driver process is gone. A driver killed with SIGKILL
    cannot stop its pool, and its spawned workers would otherwise wait (or train) forever; their
    runs are still ``running`` in the store and run again when the study is resumed."""

    def watch() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="ftscale-watch-parent", daemon=True).start()


def _outcome(future) -> dict[str, Any]:
    """A future's outcome; a task whose worker raised instead of answering is a failed run."""
    from ftscale.common import first_line

    try:
        return future.result()
    except Exception as exc:
        return _died(f"{type(exc).__name__}: {first_line(exc)}")


def _died(why: str) -> dict[str, Any]:
    """The outcome of a run whose worker died or failed to answer."""
    return {"status": "failed", "record": None, "search": None, "error": f"worker died: {why}",
            "wall_s": None}


@register_executor("ray")
class RayExecutor(Executor):
    """Each task a Ray task (``num_cpus``/``num_gpus`` per task); results come back to the
    driver, which alone writes the store. Connects to ``--address`` (``auto``: the running
    cluster) or starts a local instance."""

    refs: dict | None = None

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise UserError(
                "the ray executor needs Ray: pip install 'ftscale[ray]' (or ray[default])"
            ) from None
        return ray

    def map(self, tasks):
        from ftscale.study.worker import perform

        if not tasks:
            return
        ray = self._ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.options.address:
                kwargs["address"] = self.options.address
            else:
                kwargs["num_cpus"] = self.options.workers or None
            ray.init(**kwargs)
        threads = self.options.threads or max(1, int(self.options.num_cpus))
        remote = ray.remote(
            num_cpus=self.options.num_cpus, num_gpus=self.options.num_gpus, max_retries=0
        )(perform)
        self.refs = {remote.remote(kind, spec, threads): task_id for task_id, kind, spec in tasks}
        try:
            while self.refs:
                done, _ = ray.wait(list(self.refs), num_returns=1)
                for ref in done:
                    task_id = self.refs.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # task died (node lost, worker killed)
                        from ftscale.common import first_line

                        outcome = {
                            "status": "failed",
                            "record": None,
                            "search": None,
                            "error": f"ray task failed: {first_line(exc)}",
                            "wall_s": None,
                        }
                    yield task_id, outcome
        finally:
            self.close()

    def close(self) -> None:
        if self.refs:
            ray = self._ray()
            for ref in list(self.refs):
                ray.cancel(ref, force=True)
            self.refs = None

    def describe(self, n_tasks: int) -> str:
        where = self.options.address or "local Ray instance"
        return (
            f"ray ({where}; {self.options.num_cpus:g} CPU, {self.options.num_gpus:g} GPU per run)"
        )
