"""Study runner throughput: the smoke study with the local executor against the process pool.

Builds the smoke ladder once (not timed), then runs the smoke study's runs (no report) into fresh
directories with each executor and prints the wall time and the ratio local / process, measured
in the same run. Usage:

    PYTHONPATH=src python benchmarks/bench_study.py [--study builtin:smoke]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="builtin:smoke")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("FTSCALE_CACHE", str(Path(tmp) / "cache"))
        from ftscale.models.ladder import build_ladder
        from ftscale.study.config import load_study
        from ftscale.study.executors import ExecutorOptions
        from ftscale.study.runner import run_study

        study = load_study(args.study)
        build_ladder(study.ladder, progress=False)
        times = {}
        for name in ("process", "local"):
            start = time.perf_counter()
            summary = run_study(study, Path(tmp) / name, executor=name,
                                options=ExecutorOptions(threads=1), report=False)
            times[name] = time.perf_counter() - start
            print(f"{name:>8}: {summary.ran} runs in {times[name]:.1f} s "
                  f"({summary.ok} ok, {summary.failed} failed)")
        print(f"local / process wall time: {times['local'] / times['process']:.2f}x "
              f"(load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
