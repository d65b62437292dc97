"""Tasks and data sources: reading tables and (source, target) pairs, the built-in corpus."""

from ftscale.data.pairs import Pair, read_pairs
from ftscale.data.tables import read_table

__all__ = ["Pair", "read_pairs", "read_table"]
