"""User task data: column mapping, validation with counts, whole-group splits."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ftscale.cli import app
from ftscale.data.tasks import assign_splits, load_task, write_pairs_jsonl
from ftscale.errors import UserError


def _frame(n: int, groups: int | None = None) -> pd.DataFrame:
    rows = {"en": [f"sentence {i}" for i in range(n)], "de": [f"Satz {i}" for i in range(n)]}
    if groups:
        rows["doc"] = [f"d{i % groups}" for i in range(n)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_columns_mapped_by_name_and_splits_partition(tmp_path, suffix):
    frame = _frame(400)
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path)
    splits = {s: load_task(str(path), s, source="en", target="de")
              for s in ("train", "dev", "test")}
    sizes = {s: len(p) for s, p in splits.items()}
    assert sum(sizes.values()) == 400
    assert sizes["test"] == 100 and sizes["dev"] == 20  # min(1000, 25%) and 5%
    assert set(splits["train"]).isdisjoint(splits["test"])
    assert splits["test"][0].source.startswith("sentence ")
    # deterministic
    assert load_task(str(path), "test", source="en", target="de") == splits["test"]


def test_groups_stay_within_one_split(tmp_path):
    path = tmp_path / "g.csv"
    _frame(600, groups=40).to_csv(path, index=False)
    splits = {s: load_task(str(path), s, source="en", target="de", group="doc")
              for s in ("train", "dev", "test")}
    doc_of = {f"sentence {i}": f"d{i % 40}" for i in range(600)}
    docs = {s: {doc_of[p.source] for p in pairs} for s, pairs in splits.items()}
    assert docs["train"].isdisjoint(docs["test"]) and docs["dev"].isdisjoint(docs["test"])
    assert docs["train"].isdisjoint(docs["dev"])


def test_identical_sources_never_straddle_splits():
    labels = assign_splits(["a", "b", "a", "c", "a"] * 50 + [f"x{i}" for i in range(300)])
    first = {}
    for key, label in zip(["a", "b", "a", "c", "a"] * 50, labels, strict=False):
        assert first.setdefault(key, label) == label


def test_split_column_is_used_as_given(tmp_path):
    path = tmp_path / "s.jsonl"
    rows = [{"source": f"s{i}", "target": f"t{i}", "split": "test" if i < 3 else "train"}
            for i in range(10)]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert [p.source for p in load_task(str(path), "test")] == ["s0", "s1", "s2"]
    with pytest.raises(UserError, match="split 'dev' is empty"):
        load_task(str(path), "dev")


def test_errors_name_file_column_and_counts(tmp_path):
    csv = tmp_path / "a.csv"
    _frame(10).to_csv(csv, index=False)
    with pytest.raises(UserError, match=r"a\.csv: column 'source' not found \(columns: en, de\)"):
        load_task(str(csv))
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(UserError, match=r"e\.csv: file is empty"):
        load_task(str(empty))
    dup = tmp_path / "d.csv"
    pd.DataFrame({"source": ["a", "b", "a", "a"], "target": ["x", "y", "x", "x"]}).to_csv(
        dup, index=False)
    with pytest.raises(UserError, match=r"2 duplicate pair\(s\), first at row 3 \(same as row 1\)"):
        load_task(str(dup))
    blank = tmp_path / "b.jsonl"
    blank.write_text('{"source": "a", "target": " "}\n{"source": "", "target": "y"}\n'
                     '{"source": "c", "target": "z"}\n')
    with pytest.raises(UserError, match=r"2 empty pair\(s\).*first at row 1"):
        load_task(str(blank))


def test_hf_spec_without_datasets_is_a_user_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(UserError, match="pip install datasets"):
        load_task("hf:wmt14:de-en")


def test_cli_user_file_and_error(tmp_path):
    from ftscale.data.pairs import Pair

    path = write_pairs_jsonl([Pair(f"s{i}", f"Zielsatz {i} ä") for i in range(50)],
                             tmp_path / "p.jsonl")
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "show", str(path), "--split", "test", "--limit", "3"])
    assert ok.exit_code == 0
    assert [json.loads(line)["target"].endswith("ä") for line in ok.stdout.splitlines()] == [
        True] * 3
    bad = runner.invoke(app, ["data", "show", str(path), "--source", "en"])
    assert bad.exit_code == 2
    assert "column 'en' not found" in bad.output and "Traceback" not in bad.output


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=400))
def test_assign_splits_keeps_groups_whole(group_ids):
    groups = [f"g{g}" for g in group_ids]
    labels = assign_splits(groups)
    label_of: dict[str, str] = {}
    for group, label in zip(groups, labels, strict=True):
        assert label in ("train", "dev", "test")
        assert label_of.setdefault(group, label) == label
    assert "test" in labels  # the first group always goes to test
    assert assign_splits(groups) == labels


def test_csv_pair_text_na_none_is_text_not_missing(tmp_path):
    """`NA`, `None`, `null` and number-like cells of a pair are text as written."""
    path = tmp_path / "na.csv"
    path.write_text("source,target,split\nhello,NA,test\nworld,None,test\nzero,007,test\n"
                    "n,null,train\n", encoding="utf-8")
    assert [(p.source, p.target) for p in load_task(str(path), "test")] == [
        ("hello", "NA"), ("world", "None"), ("zero", "007")]
    from ftscale.data.pairs import read_pairs

    assert [p.target for p in read_pairs(path)] == ["NA", "None", "007", "null"]


def test_numeric_tables_keep_pandas_missing_values(tmp_path):
    """Runs tables (read by `fit`) still parse numbers and read `NA` as missing."""
    from ftscale.data.tables import read_table

    path = tmp_path / "runs.csv"
    path.write_text("examples,test_nll\n100,NA\n200,2.5\n", encoding="utf-8")
    frame = read_table(path)
    assert frame["examples"].tolist() == [100, 200] and frame["test_nll"].isna().tolist() == [
        True, False]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_array_and_json_lines_both_read_by_content(tmp_path, suffix):
    from ftscale.data.tables import read_table

    rows = [{"source": f"s{i}", "target": "2024" if i == 0 else f"t{i}"} for i in range(3)]
    as_array, as_lines = tmp_path / f"a{suffix}", tmp_path / f"l{suffix}"
    as_array.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    as_lines.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    for path in (as_array, as_lines):
        frame = read_table(path)
        assert frame.to_dict("records") == rows  # "2024" stays text, not a number
    # a JSON-lines file whose first line is an array is not taken for one array
    mixed = tmp_path / f"m{suffix}"
    mixed.write_text('[1]\n{"source": "a"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"line 1: expected a JSON object, got an array"):
        read_table(mixed)
