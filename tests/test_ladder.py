"""Ladder pretraining end to end: a two-rung, two-checkpoint ladder built in-test (< 1 minute)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ftscale.cli import app
from ftscale.errors import UserError
from ftscale.models import ladder as ld
from ftscale.models.pretrain import eval_loss

ROOT = Path(__file__).resolve().parents[1]
V, SEQ, BATCH = 384, 64, 16
STEP = SEQ * BATCH
TOML = textwrap.dedent(f"""
    name = "test2"
    threads = 1
    workers = 1
    [tokenizer]
    vocab_size = {V}
    [recipe]
    tokens = {150 * STEP}
    batch_size = {BATCH}
    seq_len = {SEQ}
    lr = 4e-3
    checkpoints = [{60 * STEP}]
    val_tokens = 8192
    [[rungs]]
    name = "small"
    width = 16
    layers = 1
    heads = 2
    ffn = 32
    [[rungs]]
    name = "large"
    width = 64
    layers = 2
    heads = 4
    ffn = 256
""")


def llama_params(vocab: int, d: int, layers: int, ffn: int) -> tuple[int, int]:
    """(total, non-embedding) parameters of a tied-embedding Llama, counted by hand:
    embedding V*d; per layer q,k,v,o 4*d^2 + gate,up,down 3*d*ffn + two RMSNorm weights 2*d;
    a final RMSNorm d."""
    nonemb = layers * (4 * d * d + 3 * d * ffn + 2 * d) + d
    return vocab * d + nonemb, nonemb


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The two-rung ladder, built once for this module: (config file, cache, path, seconds)."""
    base = tmp_path_factory.mktemp("ladder")
    config_file = base / "ladder.toml"
    config_file.write_text(TOML, encoding="utf-8")
    cache = base / "cache"
    start = time.perf_counter()
    path, reused = ld.build_ladder(ld.load_config(config_file), cache, progress=False)
    seconds = time.perf_counter() - start
    assert not reused
    return config_file, cache, path, seconds


def test_two_rung_ladder_builds_in_under_a_minute(built):
    _, _, path, seconds = built
    assert seconds < 60, f"build took {seconds:.1f} s"
    assert ld.is_complete(path)
    rows = ld.read_ladder(path)
    assert [(r["rung"], r["tokens_seen"]) for r in rows] == [
        ("small", 60 * STEP), ("small", 150 * STEP), ("large", 60 * STEP), ("large", 150 * STEP)]


def test_manifest_parameter_counts_by_hand(built):
    rows = ld.read_ladder(built[2])
    shapes = {"small": (16, 1, 32), "large": (64, 2, 256)}
    for row in rows:
        d, layers, ffn = shapes[row["rung"]]
        total, nonemb = llama_params(V, d, layers, ffn)
        assert (row["total_params"], row["nonembedding_params"], row["embedding_params"]) == (
            total, nonemb, V * d)
        assert row["vocab_size"] == V and row["step"] * STEP == row["tokens_seen"]
        for key in ("train_loss", "val_loss"):
            assert 2.0 < row[key] < 6.5  # below uniform log(384) = 5.95 after training


def test_larger_rung_reaches_lower_validation_loss(built):
    rows = ld.read_ladder(built[2])
    val = {(r["rung"], r["tokens_seen"]): r["val_loss"] for r in rows}
    # Margins measured over seeds 0-3: >= 0.11 after 60 steps, >= 0.29 after 150.
    assert val[("large", 60 * STEP)] < val[("small", 60 * STEP)] - 0.05
    assert val[("large", 150 * STEP)] < val[("small", 150 * STEP)] - 0.2
    # and more pretraining helps each rung (the pretraining-data axis)
    for rung in ("small", "large"):
        assert val[(rung, 150 * STEP)] < val[(rung, 60 * STEP)]


def test_checkpoint_is_a_loadable_hf_model_with_its_tokenizer(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    row = ld.read_ladder(built[2])[-1]
    model = AutoModelForCausalLM.from_pretrained(row["path"])
    tok = AutoTokenizer.from_pretrained(row["path"])
    assert model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() == \
        model.get_output_embeddings().weight.data_ptr()
    text = "Und Gott sprach: Es werde Licht! And God said, Let there be light."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    loss = eval_loss(model, torch.tensor([ids]))
    assert loss < 7.0


def test_second_build_hits_the_cache(built):
    config_file, cache, path, seconds = built
    start = time.perf_counter()
    again, reused = ld.build_ladder(ld.load_config(config_file), cache, progress=False)
    assert reused and again == path
    assert time.perf_counter() - start < min(5.0, seconds / 2)
    # threads are a run-time setting, not part of the key; the recipe is
    cfg = ld.load_config(config_file)
    assert ld.config_key(cfg.model_copy(update={"threads": 2})) == ld.config_key(cfg)
    changed = cfg.model_copy(update={"tokenizer": ld.TokenizerConfig(vocab_size=V + 1)})
    assert ld.config_key(changed) != ld.config_key(cfg)


def test_cli_build_reuses_and_show_lists_every_checkpoint(built):
    config_file, cache, path, _ = built
    runner = CliRunner()
    out = runner.invoke(app, ["ladder", "build", str(config_file), "--cache", str(cache)])
    assert out.exit_code == 0, out.output
    assert out.stdout.strip().splitlines()[-1] == str(path)
    shown = runner.invoke(app, ["ladder", "show", str(path), "--json"])
    assert shown.exit_code == 0
    rows = json.loads(shown.stdout)
    assert [list(r) for r in rows] == [list(ld.SHOW_COLUMNS)] * 4
    assert rows == [{k: r[k] for k in ld.SHOW_COLUMNS} for r in ld.read_ladder(path)]
    by_toml = runner.invoke(app, ["ladder", "show", str(config_file), "--cache", str(cache)])
    assert by_toml.exit_code == 0 and "large" in by_toml.stdout and "tokens_seen" in by_toml.stdout


def test_external_ladder_from_local_paths(built, tmp_path):
    """A family given as local directories (two sizes, no hub): sizes read from the models."""
    rows = {(r["rung"], r["tokens_seen"]): r for r in ld.read_ladder(built[2])}
    small, large = rows[("small", 150 * STEP)], rows[("large", 150 * STEP)]
    early = rows[("large", 60 * STEP)]
    config = tmp_path / "ext.toml"
    config.write_text(textwrap.dedent(f"""
        name = "fam"
        kind = "external"
        val_tokens = 2048
        [[external]]
        name = "s"
        model = "{small['path']}"
        tokens = {150 * STEP}
        [[external]]
        name = "l"
        model = "{large['path']}"
        revisions = [{{revision = "main", tokens = {150 * STEP}}}]
        [[external]]
        name = "l-early"
        model = "{early['path']}"
        tokens = {60 * STEP}
    """), encoding="utf-8")
    runner = CliRunner()
    out = runner.invoke(app, ["ladder", "build", str(config), "--cache", str(tmp_path / "c"),
                              "--quiet"])
    assert out.exit_code == 0, out.output
    ext = ld.read_ladder(out.stdout.strip().splitlines()[-1])
    assert [(r["rung"], r["path"], r["tokens_seen"]) for r in ext] == [
        ("s", small["path"], 150 * STEP), ("l", large["path"], 150 * STEP),
        ("l-early", early["path"], 60 * STEP)]
    for got, want in zip(ext, (small, large, early), strict=True):
        assert got["total_params"] == want["total_params"]
        assert got["nonembedding_params"] == want["nonembedding_params"]
        assert got["source"] == "local" and got["train_loss"] is None
        assert got["val_loss"] < 6.0
    assert ext[0]["val_loss"] > ext[1]["val_loss"]
    assert ext[1]["revision"] == "main"


def test_external_missing_local_path_is_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('name = "x"\nkind = "external"\n[[external]]\nname = "a"\n'
                      'model = "./no/such/model"\n', encoding="utf-8")
    out = CliRunner().invoke(app, ["ladder", "build", str(config), "--cache", str(tmp_path),
                                   "--quiet"])
    assert out.exit_code == 2
    assert out.output.strip() == (
        "ftscale: error: ladder x: external 'a': ./no/such/model: no such local model directory")
    assert not (tmp_path / "ladders").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('name = "x"\n[recipe]\ntokens = 100000\n',
         "a pretrain ladder needs at least one [[rungs]] entry"),
        ('name = "x"\n[recipe]\ntokens = 100000\ncheckpoints = [200000]\n'
         '[[rungs]]\nname="a"\nwidth=8\nlayers=1\nheads=2\nffn=8\n',
         "recipe: checkpoint 200000 tokens is beyond the budget of 100000"),
        ('name = "x"\n[recipe]\ntokens = 100000\n[[rungs]]\nname="a"\nwidth=10\nlayers=1\n'
         'heads=3\nffn=8\n', "rungs.0: width 10 is not divisible by heads 3"),
        # Honest records: a step sees a whole batch, so a smaller budget cannot be recorded.
        ('name = "x"\n[recipe]\ntokens = 10\n[[rungs]]\nname="a"\nwidth=8\nlayers=1\n'
         'heads=2\nffn=8\n', "recipe: tokens 10 is less than one batch (batch_size 16 x seq_len"
         " 128 = 2,048 tokens)"),
        ('name = "x"\n[tokenizer]\nvocab_size = 10\n', "tokenizer.vocab_size: Input should be"),
        ('name = "x"\nrecipie = 1\n', "recipie: Extra inputs are not permitted"),
        # A misspelt key comes first: it is why the real key looks missing.
        ('name = "x"\n[recipe]\ntokenz = 5\n',
         "recipe.tokenz: Extra inputs are not permitted; recipe.tokens: Field required"),
        ('name = "x"\n[recipe\n', "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(UserError) as info:
        ld.load_config(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)
    out = CliRunner().invoke(app, ["ladder", "build", str(path), "--cache", str(tmp_path)])
    assert out.exit_code == 2 and out.output.count("\n") == 1
    assert not (tmp_path / "ladders").exists()


def test_parallel_workers_give_the_same_ladder(built, tmp_path):
    """Two rungs in two spawned one-thread processes: same checkpoints and losses as in-process."""
    shutil.copytree(built[1] / "tokenizers", tmp_path / "tokenizers")  # reuse the tokenizer
    config = ld.load_config(built[0])
    path, reused = ld.build_ladder(config, tmp_path, workers=2, progress=False)
    assert not reused and path.name == built[2].name
    assert ld.ladder_summary(path)["rungs"]["large"]["workers"] == 2
    assert not (path / "_blocks.pt").exists()
    serial, parallel = ld.read_ladder(built[2]), ld.read_ladder(path)
    assert [(r["rung"], r["tokens_seen"]) for r in parallel] == [
        (r["rung"], r["tokens_seen"]) for r in serial]
    for a, b in zip(serial, parallel, strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-3)
        assert b["total_params"] == a["total_params"]
    assert multiprocessing.active_children() == []


def test_parallel_build_interrupted_stops_its_workers(built, tmp_path):
    shutil.copytree(built[1] / "tokenizers", tmp_path / "tokenizers")

    def stop(*_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ld.build_ladder(ld.load_config(built[0]), tmp_path, workers=2, progress=False,
                        on_checkpoint=stop)
    assert multiprocessing.active_children() == []
    assert list((tmp_path / "ladders").iterdir()) == []


def test_interrupted_build_leaves_nothing(built):
    """``on_checkpoint`` raising stops the build and removes the temporary directory."""
    cache = built[1]  # shares the cached tokenizer with the fixture
    base = ld.load_config(built[0])
    config = base.model_copy(update={"recipe": base.recipe.model_copy(update={"seed": 1})})
    seen = []

    def stop(rung: str, tokens: int, ckpt: Path) -> None:
        seen.append((rung, tokens, ckpt))
        assert (ckpt / ld.MANIFEST_FILE).is_file()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ld.build_ladder(config, cache, progress=False, on_checkpoint=stop)
    assert seen and seen[0][2].parts[-3].startswith(".tmp-")
    assert [p.name for p in (cache / "ladders").iterdir()] == [built[2].name]
    assert not ld.entry_path(config, cache).exists()


def test_killed_build_leaves_no_usable_entry(built, tmp_path):
    """SIGKILL a build process after its first checkpoint: no complete entry, `ladder show`
    refuses the leftover, the next build removes it."""
    toml = tmp_path / "kill.toml"
    toml.write_text(TOML.replace(f"tokens = {150 * STEP}", f"tokens = {600 * STEP}")
                    .replace(f"checkpoints = [{60 * STEP}]", f"checkpoints = [{5 * STEP}]")
                    .replace('name = "test2"', 'name = "kill"'), encoding="utf-8")
    cache = built[1]  # shares the cached tokenizer with the fixture
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftscale", "ladder", "build", str(toml), "--cache", str(cache),
         "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ladders = cache / "ladders"
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            if list(ladders.glob(".tmp-kill-*/small/tokens-*/manifest.json")):
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint appeared within 90 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    config = ld.load_config(toml)
    leftovers = list(ladders.glob("*kill*"))
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".tmp-kill-")
    assert not ld.is_complete(leftovers[0])
    assert not ld.entry_path(config, tmp_path).exists()
    with pytest.raises(UserError, match="not a complete ladder"):
        ld.read_ladder(leftovers[0])
    with pytest.raises(UserError, match="ladder not built yet"):
        ld.read_ladder(toml, cache)

    def stop(*_):
        raise KeyboardInterrupt

    dead_tokenizer = cache / "tokenizers" / f".tmp-bpe-{V}-0123456789abcdef-{2**22 + 7}-0badc0de"
    dead_tokenizer.mkdir()  # a tokenizer half-saved by a killed process (pid beyond pid_max)
    with pytest.raises(KeyboardInterrupt):  # a new build first clears the dead build's leftovers
        ld.build_ladder(config, cache, progress=False, on_checkpoint=stop)
    assert list(ladders.glob("*kill*")) == []
    assert not dead_tokenizer.exists()


def test_count_params_untied_and_tied():
    from transformers import LlamaForCausalLM

    from ftscale.models.pretrain import Shape, count_params, llama_config

    cfg = llama_config(Shape(32, 2, 4, 64), vocab_size=300, seq_len=32)
    tied = count_params(LlamaForCausalLM(cfg))
    total, nonemb = llama_params(300, 32, 2, 64)
    assert tied == {"total": total, "embedding": 300 * 32, "nonembedding": nonemb}
    cfg.tie_word_embeddings = False
    untied = count_params(LlamaForCausalLM(cfg))
    assert untied == {"total": total + 300 * 32, "embedding": 2 * 300 * 32,
                      "nonembedding": nonemb}


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (from /proc; Linux)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigterm_cleans_up_like_ctrl_c_and_stops_workers(built, tmp_path):
    """SIGTERM a `ladder build` with two worker processes after its first checkpoint: exit 143,
    one line saying what was kept, no `.tmp-` folder, and no worker process left."""
    toml = tmp_path / "term.toml"
    toml.write_text(TOML.replace(f"tokens = {150 * STEP}", f"tokens = {600 * STEP}")
                    .replace(f"checkpoints = [{60 * STEP}]", f"checkpoints = [{5 * STEP}]")
                    .replace("workers = 1", "workers = 2")
                    .replace('name = "test2"', 'name = "term"'), encoding="utf-8")
    cache = built[1]  # shares the cached tokenizer with the fixture
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftscale", "ladder", "build", str(toml), "--cache", str(cache),
         "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ladders = cache / "ladders"
    deadline = time.monotonic() + 120
    try:
        while not list(ladders.glob(".tmp-term-*/*/tokens-*/manifest.json")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint appeared within 120 s"
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert workers, "the build runs its rungs in worker processes"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 143, err
    assert lines == [f"ftscale: interrupted; ladder term not built, its temporary folder removed;"
                     f" the trained tokenizer is kept in {cache / 'tokenizers'}"], err
    assert out == "" and "Traceback" not in err
    assert list(ladders.glob("*term*")) == []
    gone = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < gone:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived the build"


def test_val_tokens_beyond_held_out_text_refused_with_exact_numbers(built):
    """Between the byte bound and the real token count: refused after tokenization, before any
    rung is trained or any ladder folder is made, with the held-out text's exact size."""
    from ftscale.data import corpus
    from ftscale.models.tokenizer import load_tokenizer

    cache = built[1]
    (tok_dir,) = (cache / "tokenizers").glob(f"bpe-{V}-*")
    tok = load_tokenizer(tok_dir)
    val_ids = sum(len(e.ids) + 1 for e in tok.backend_tokenizer.encode_batch(
        corpus.pretraining_documents("val"), add_special_tokens=False))
    blocks = val_ids // SEQ
    base = ld.load_config(built[0])
    config = base.model_copy(update={
        "name": "val", "recipe": base.recipe.model_copy(update={"val_tokens": (blocks + 1) * SEQ})})
    before = sorted(p.name for p in (cache / "ladders").iterdir())
    with pytest.raises(UserError) as info:
        ld.build_ladder(config, cache, progress=False)
    assert str(info.value) == (
        f"ladder val: recipe.val_tokens: {(blocks + 1) * SEQ:,} is more than the held-out text "
        f"has ({blocks:,} blocks of {SEQ} = {blocks * SEQ:,} tokens)")
    assert sorted(p.name for p in (cache / "ladders").iterdir()) == before


def test_batch_needs_that_many_distinct_blocks():
    """A step must see ``batch_size`` distinct blocks, else it would record tokens it never saw."""
    from ftscale.models.build import check_blocks
    from ftscale.models.pretrain import TokenData

    config = ld.parse_config({"name": "b", "recipe": {"tokens": 4096, "batch_size": 4,
                                                      "seq_len": 8, "val_tokens": 8},
                              "rungs": [{"name": "a", "width": 8, "layers": 1, "heads": 2,
                                         "ffn": 8}]})
    check_blocks(config, TokenData(train=torch.zeros(4, 8, dtype=torch.long),
                                   val=torch.zeros(1, 8, dtype=torch.long)))
    with pytest.raises(UserError, match=r"recipe\.batch_size: 4 sequences per step, but the "
                                        r"pretraining text makes only 3 blocks of 8 tokens"):
        check_blocks(config, TokenData(train=torch.zeros(3, 8, dtype=torch.long),
                                       val=torch.zeros(1, 8, dtype=torch.long)))


def test_library_refuses_negative_run_settings_before_writing(tmp_path):
    config = ld.parse_config({"name": "n", "recipe": {"tokens": 4096},
                              "rungs": [{"name": "a", "width": 8, "layers": 1, "heads": 2,
                                         "ffn": 8}]})
    for kw in ({"workers": -1}, {"threads": -2}):
        with pytest.raises(UserError, match=f"{next(iter(kw))} must be 0 .* got -"):
            ld.build_ladder(config, tmp_path / "c", progress=False, **kw)
    assert not (tmp_path / "c").exists()
