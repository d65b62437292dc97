"""Tasks and data sources: reading tables and (source, target) pairs, the built-in corpus."""

from ftscale.data.pairs import Pair, read_pairs
from ftscale.data.tables import read_table
from ftscale.data.tasks import builtin_pairs, load_task, write_pairs_jsonl

__all__ = ["Pair", "builtin_pairs", "load_task", "read_pairs", "read_table", "write_pairs_jsonl"]
