"""Finetuning tasks: the built-in En->De and zero-shot Fr->De tasks, and user data with splits.

A task is named by a *spec* string:

* ``builtin:en-de``: WEB (English) -> Elberfelder (German), verse-aligned, from the built-in corpus
  (:mod:`ftscale.data.corpus`); splits ``train``, ``dev``, ``test`` by whole books;
* ``builtin:fr-de``: Segond (French) -> Elberfelder on the same dev and test books, for zero-shot
  evaluation of models finetuned on En->De (it has no train split);
* a path to a JSONL, CSV, TSV or Parquet file;
* ``hf:NAME`` or ``hf:NAME:CONFIG`` (optionally ``@REVISION``): a Hugging Face ``datasets`` dataset
  (needs the ``datasets`` package and, unless cached, a network).

User data is split like the built-in task: whole groups go to one split (a ``group`` column when
given, else identical sources stay together), so no test example's source is seen in training. A
``split`` column with values train/dev/test, when present, is used as given instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ftscale.common import first_line
from ftscale.data import corpus
from ftscale.data.pairs import Pair, check_nonempty, pairs_from_frame
from ftscale.data.tables import read_table, require_columns
from ftscale.errors import UserError

#: Built-in tasks: name -> (source translation, target translation, splits it has).
BUILTIN_TASKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "en-de": ("4", "e", ("train", "dev", "test")),
    "fr-de": ("l", "e", ("dev", "test")),
}
#: Split names every task uses.
SPLITS = ("train", "dev", "test")
#: Fraction of user pairs put in the dev split (whole groups, at least one group).
DEV_FRACTION = 0.05
#: Fraction of user pairs put in the test split; at least min(1000, 25%) of the pairs.
TEST_FRACTION = 0.10


def builtin_pairs(name: str, split: str) -> list[Pair]:
    """Pairs of a built-in task (``"en-de"`` or ``"fr-de"``) for one split, in canonical verse
    order. Test: Jonah, Mark, Romans (1,159 pairs); dev: Ruth, Galatians (234 pairs); train: the
    other 61 books (29,700+ pairs for En->De), minus the few pairs whose source or target text is
    also a dev/test text. Empty or bracket-only verses are dropped."""
    if name not in BUILTIN_TASKS:
        raise UserError(f"builtin:{name}: unknown built-in task (known: {_builtin_names()})")
    source, target, splits = BUILTIN_TASKS[name]
    if split not in splits:
        raise UserError(f"builtin:{name}: no {split!r} split (has: {', '.join(splits)})")
    held_out = set(corpus.DEV_BOOKS) | set(corpus.TEST_BOOKS)
    if split == "train":
        rows = corpus.aligned_verses(source, target, exclude=held_out)
        # Synoptic parallels repeat a few verses word for word in other books (e.g. Mark 13:31 =
        # Matthew 24:35): drop training pairs whose source or target text is a dev/test one.
        held_texts = {
            text
            for s, t in corpus.aligned_verses(source, target, books=held_out)
            for text in (s.text, t.text)
        }
        rows = [(s, t) for s, t in rows if s.text not in held_texts and t.text not in held_texts]
    else:
        books = corpus.DEV_BOOKS if split == "dev" else corpus.TEST_BOOKS
        rows = corpus.aligned_verses(source, target, books=set(books))
    return [Pair(s.text, t.text) for s, t in rows]


def _builtin_names() -> str:
    return ", ".join(f"builtin:{k}" for k in BUILTIN_TASKS)


def load_task(
    spec: str,
    split: str = "train",
    *,
    source: str = "source",
    target: str = "target",
    group: str | None = None,
) -> list[Pair]:
    """The (source, target) pairs of one split of a task named by ``spec`` (see module docs).

    For user data, ``source``/``target`` name the text columns and ``group`` an optional column of
    group ids kept within one split. Raises a one-line :class:`UserError` for an unknown task or
    split, missing columns, an empty table, or empty/duplicate pairs (with counts).
    """
    if split not in SPLITS:
        raise UserError(f"{spec}: unknown split {split!r} (use: {', '.join(SPLITS)})")
    if spec.startswith("builtin:"):
        return builtin_pairs(spec.removeprefix("builtin:"), split)
    frame = _read_hf(spec) if spec.startswith("hf:") else read_table(spec, text=True)
    return split_frame(frame, split, source=source, target=target, group=group, origin=spec)


def _read_hf(spec: str) -> pd.DataFrame:
    """Read ``hf:NAME[:CONFIG][@REVISION]`` with ``datasets`` (all its splits concatenated)."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise UserError(f"{spec}: Hugging Face datasets need `pip install datasets`") from None
    body = spec.removeprefix("hf:")
    body, _, revision = body.partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise UserError(f"{spec}: expected hf:NAME[:CONFIG][@REVISION]")
    try:
        loaded = datasets.load_dataset(name, config or None, revision=revision or None)
    except Exception as exc:  # datasets raises many types; all are the user's to fix
        first = first_line(exc)
        raise UserError(f"{spec}: cannot load dataset: {first}") from None
    frames = []
    for split_name, part in loaded.items():
        frame = part.to_pandas()
        if "split" not in frame.columns and split_name in SPLITS:
            frame["split"] = split_name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def validate_pairs(pairs: Sequence[Pair], origin: str) -> None:
    """Raise one :class:`UserError` line when some pairs are empty (blank source or target) or
    duplicated, giving the counts and the first offending row (1-based)."""
    check_nonempty(pairs, origin)
    seen: dict[tuple[str, str], int] = {}
    dups = []
    for i, p in enumerate(pairs, 1):
        key = (p.source.strip(), p.target.strip())
        if key in seen:
            dups.append((i, seen[key]))
        else:
            seen[key] = i
    if dups:
        row, first = dups[0]
        raise UserError(
            f"{origin}: {len(dups)} duplicate pair(s), first at row {row} (same as row {first})"
        )


def split_frame(
    frame: pd.DataFrame,
    split: str,
    *,
    source: str = "source",
    target: str = "target",
    group: str | None = None,
    origin: str = "data",
) -> list[Pair]:
    """Validate a table of pairs and return one split of it, by whole groups.

    With a ``split`` column, its values (train/dev/test) are used. Otherwise groups (the ``group``
    column, or the source text) are ordered by a stable hash and the first ones filled into test
    (:data:`TEST_FRACTION` of the pairs, at least min(1000, 25%)), the next into dev
    (:data:`DEV_FRACTION`, at least one group); the rest is train.
    """
    require_columns(frame, [source, target] + ([group] if group else []), origin)
    pairs = pairs_from_frame(frame, source, target, origin)
    validate_pairs(pairs, origin)
    if "split" in frame.columns:
        labels = [str(v) for v in frame["split"]]
        bad = sorted(set(labels) - set(SPLITS))
        if bad:
            raise UserError(f"{origin}: column 'split' has {bad[0]!r} (use: {', '.join(SPLITS)})")
    else:
        keys = [str(v) for v in frame[group]] if group else [p.source.strip() for p in pairs]
        labels = assign_splits(keys)
    chosen = [p for p, label in zip(pairs, labels, strict=True) if label == split]
    if not chosen:
        raise UserError(f"{origin}: split {split!r} is empty ({len(pairs)} pairs in all)")
    return chosen


def assign_splits(groups: Sequence[str], seed: int = 0) -> list[str]:
    """Split label (train/dev/test) for each item, keeping items with equal group ids together.

    Groups are ordered by a SHA-256 of ``seed`` and the id (stable across runs and machines), then
    test and dev are filled with whole groups up to their targets in items (examples).
    """
    n = len(groups)
    sizes: dict[str, int] = {}
    for key in groups:
        sizes[key] = sizes.get(key, 0) + 1
    order = sorted(sizes, key=lambda k: hashlib.sha256(f"{seed}\x00{k}".encode()).hexdigest())
    n_test = max(1, round(TEST_FRACTION * n), min(1000, round(0.25 * n)))
    n_dev = max(1, round(DEV_FRACTION * n))
    label_of: dict[str, str] = {}
    filled = {"test": 0, "dev": 0}
    for key in order:
        if filled["test"] < n_test:
            label_of[key] = "test"
        elif filled["dev"] < n_dev:
            label_of[key] = "dev"
        else:
            label_of[key] = "train"
        if label_of[key] in filled:
            filled[label_of[key]] += sizes[key]
    return [label_of[k] for k in groups]


def write_pairs_jsonl(pairs: Sequence[Pair], path: str | Path) -> Path:
    """Write pairs as JSONL lines ``{"source": ..., "target": ...}`` (UTF-8), the format
    :func:`ftscale.data.pairs.read_pairs` and ``ftscale finetune`` read. Returns the path."""
    import json

    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps({"source": p.source, "target": p.target}, ensure_ascii=False))
            fh.write("\n")
    return path
