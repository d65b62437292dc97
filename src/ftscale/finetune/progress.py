"""Training progress on stderr: a live bar on a terminal, one plain line per dev check otherwise.

The training loop calls a :class:`Progress` (``start``, ``step``, ``dev``, ``note``, ``close``);
the library default is silence (``None``). :func:`make_progress` picks the reporter for the
command line: a `rich` live bar with the step, loss, dev NLL and ETA when stderr is a terminal,
one plain line per dev check when it is not (logs, CI), nothing with ``--quiet``. ``note`` is one
line about the run (its memory plan) printed as it is.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

#: Seconds between the live bar's readings of the training loss.
SHOW_LOSS_EVERY = 0.5


class Progress(Protocol):
    """What the training loop reports. ``label`` names the run (e.g. ``lr 1e-3`` in a search).
    ``loss`` is a number or a 0-dimensional tensor still on the device: reading a tensor waits
    for the device, so a reporter reads it only when it shows it."""

    def start(self, total_steps: int, label: str = "") -> None: ...

    def step(self, step: int, loss: Any) -> None: ...

    def dev(self, step: int, dev_nll: float, best: float) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


class PlainProgress:
    """One line per dev check: ``ftscale: step 40/200  loss 3.21  dev NLL 3.05 (best 3.05)``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.label, self.loss, self.started = 0, "", float("nan"), 0.0

    def start(self, total_steps: int, label: str = "") -> None:
        self.total, self.label, self.started = total_steps, label, time.perf_counter()

    def step(self, step: int, loss: Any) -> None:
        self.loss = loss  # read when a dev line is printed

    def dev(self, step: int, dev_nll: float, best: float) -> None:
        label = f"{self.label}: " if self.label else ""
        elapsed = time.perf_counter() - self.started
        print(
            f"ftscale: {label}step {step}/{self.total}  loss {float(self.loss):.4f}  dev NLL "
            f"{dev_nll:.4f} (best {best:.4f})  {elapsed:.0f} s",
            file=self.stream,
            flush=True,
        )

    def note(self, text: str) -> None:
        print(f"ftscale: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


def counting_bar(
    first: str,
    *,
    stats: str | None = None,
    last: str | None = None,
    console=None,
    transient: bool = False,
):
    """A rich progress bar of counted work (steps, runs): the ``first`` text, the bar, done of
    total, the ``stats`` text, elapsed time, ETA, then the ``last`` text (``{task...}`` fields
    allowed in each text)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(first), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(stats)] if stats else []
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    columns += [TextColumn(last)] if last else []
    return Progress(*columns, console=console, transient=transient)


class LiveProgress:
    """A rich live bar: step, loss, dev NLL (best) and ETA, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console

        self.bar = counting_bar(
            "{task.description}",
            stats="loss {task.fields[loss]}  dev {task.fields[dev]}",
            console=Console(stderr=True),
            transient=True,
        )
        self.task = None
        self.shown = 0.0

    def start(self, total_steps: int, label: str = "") -> None:
        if self.task is None:
            self.bar.start()
        else:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(label or "training", total=total_steps, loss="-", dev="-")

    def step(self, step: int, loss: Any) -> None:
        now = time.perf_counter()
        if now - self.shown < SHOW_LOSS_EVERY:  # reading the loss waits for the device
            self.bar.update(self.task, completed=step)
            return
        self.shown = now
        self.bar.update(self.task, completed=step, loss=f"{float(loss):.4f}")

    def dev(self, step: int, dev_nll: float, best: float) -> None:
        self.bar.update(self.task, completed=step, dev=f"{dev_nll:.4f} (best {best:.4f})")

    def note(self, text: str) -> None:
        self.bar.console.print(f"ftscale: {text}", markup=False, highlight=False)

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()
            self.task = None


def make_progress(quiet: bool = False, stream: TextIO | None = None) -> Progress | None:
    """The command line's reporter: ``None`` when ``quiet``, a live bar when ``stream`` (default
    stderr) is a terminal, plain lines otherwise."""
    if quiet:
        return None
    stream = stream or sys.stderr
    if stream.isatty():
        return LiveProgress()
    return PlainProgress(stream)
