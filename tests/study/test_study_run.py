"""The session study end to end: run, rerun (nothing to do), status, export, report, recommend."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess

import numpy as np
import pandas as pd
import pytest
from study_helpers import ROOT, cli
from typer.testing import CliRunner

from ftscale.cli import app

runner = CliRunner()


def _rows(study_dir):
    with sqlite3.connect(study_dir / "study.sqlite") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY key")]


def test_study_runs_end_to_end_and_writes_the_report(finished_study):
    _, study_dir, result = finished_study
    assert result.stdout.strip().splitlines()[-1] == str(study_dir)
    rows = _rows(study_dir)
    # 3 rungs x 3 methods x 3 D_f, + 2 more checkpoints x fmt x 3, + 2 more LoRA ranks x 3
    assert len(rows) == 27 + 6 + 6
    assert {r["status"] for r in rows} == {"ok"}
    assert all(r["attempts"] == 1 for r in rows)
    assert all(np.isfinite(r["test_nll"]) for r in rows)
    for name in ("report.html", "summary.md", "fits.json"):
        assert (study_dir / name).stat().st_size > 1000
    fits = json.loads((study_dir / "fits.json").read_text())
    sweeps = {(f["method"], f["sweep"], f["form"]) for f in fits["fits"]}
    assert ("fmt", "model_size", "multiplicative") in sweeps
    assert ("fmt", "pretraining", "additive") in sweeps
    assert ("lora", "pet_size", "multiplicative") in sweeps
    joint = [
        f
        for f in fits["fits"]
        if f["method"] == "fmt"
        and f["form"] == "multiplicative"
        and f["sweep"] in ("model_size", "pretraining")
    ]
    assert joint[0]["params"]["beta"] == pytest.approx(joint[1]["params"]["beta"])  # shared
    assert joint[0]["params"]["E"] == pytest.approx(joint[1]["params"]["E"])
    assert any(p["heldout"] for p in joint[0]["points"])
    assert [f["number"] for f in fits["findings"]] == [1, 2, 3, 4, 5]
    assert all(
        f["status"] in ("reproduced", "not reproduced", "inconclusive", "not testable")
        for f in fits["findings"]
    )
    assert fits["trends"]["model_size"]["pairs"] > 0
    # The zero/few-shot axis: every run scored the extra eval set, base and finetuned.
    scored = [g for g in fits["generalisation"] if "eval.fr-de.finetuned.nll" in g]
    assert scored and all(np.isfinite(g["eval.fr-de.base.nll"]) for g in scored)
    html = (study_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    summary = (study_dir / "summary.md").read_text()
    assert "Findings" in summary and "falls" in summary


def test_second_run_does_nothing(finished_study, cache_dir):
    path, study_dir, _ = finished_study
    before = _rows(study_dir)
    result = cli(["study", "run", str(path), "--no-report"], path.parent, cache_dir)
    assert result.returncode == 0, result.stderr
    assert "0 to run" in result.stderr
    assert _rows(study_dir) == before


def test_status_export_and_the_store_are_readable(finished_study, tmp_path):
    _, study_dir, _ = finished_study
    out = runner.invoke(app, ["study", "status", str(study_dir), "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)
    assert info["counts"]["ok"] == info["planned"] == 39 and info["complete"]
    target = tmp_path / "runs.csv"
    out = runner.invoke(app, ["study", "export", str(study_dir), "-o", str(target)])
    assert out.exit_code == 0, out.output
    frame = pd.read_csv(target)
    assert {"examples", "test_nll", "nonembedding_params", "tokens_seen", "method"} <= set(frame)
    assert len(frame) == 39
    # `ftscale fit` takes the export as it is.
    fit = runner.invoke(
        app, ["fit", str(target), "--x", "nonembedding_params", "--group", "method", "--json"]
    )
    assert fit.exit_code == 0, fit.output
    with sqlite3.connect(study_dir / "study.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        frame = pd.read_sql("SELECT key, status, record FROM runs", db)
    assert json.loads(frame["record"][0])["key"] == frame["key"][0]


def test_recommend_predicts_each_method(finished_study):
    _, study_dir, _ = finished_study
    out = runner.invoke(
        app,
        [
            "recommend",
            str(study_dir),
            "--model-size",
            "20000",
            "--examples",
            "150",
            "--target-loss",
            "5.3",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert set(result["methods"]) == {"fmt", "lora", "prompt"}
    best = min(result["methods"], key=lambda m: result["methods"][m]["predicted_loss"])
    assert result["best"] == best
    assert set(result["to_target"]) == {"fmt", "lora", "prompt"}
    text = runner.invoke(
        app, ["recommend", str(study_dir), "--model-size", "20000", "--examples", "150"]
    )
    assert "best method here" in text.stdout


def test_recommend_reanalyses_a_fits_file_of_another_format(finished_study, tmp_path):
    _, study_dir, _ = finished_study
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    args = ["recommend", str(copy), "--model-size", "20000", "--examples", "150", "--json"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    expected = json.loads(out.stdout)
    saved = json.loads((copy / "fits.json").read_text())
    from ftscale.study.analysis import FORMAT

    assert saved["format"] == FORMAT
    # A fits file in the shape before `format` existed, newer than the store, with laws that
    # would predict nonsense if they were read: recommend analyses the store again instead.
    old = {k: v for k, v in saved.items() if k != "format"}
    old["fits"] = [
        {
            **{k: v for k, v in f.items() if k not in ("bootstrap", "variables")},
            "params": {**f["params"], "A": f["params"]["A"] * 1e6},
            "bootstrap_thetas": (f.get("bootstrap") or {}).get("thetas"),
        }
        for f in saved["fits"]
    ]
    (copy / "fits.json").write_text(json.dumps(old))
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == expected


def test_report_command_rewrites_the_files(finished_study, tmp_path):
    _, study_dir, _ = finished_study
    out = runner.invoke(app, ["report", str(study_dir), "--output", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "report.html").is_file() and (tmp_path / "fits.json").is_file()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium binary")
def test_report_renders_in_headless_chromium(finished_study, tmp_path):
    from PIL import Image

    _, study_dir, _ = finished_study
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            (study_dir / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), float)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20  # text and figures, not a blank page


def test_examples_are_the_builtin_studies():
    for name in ("quickstart", "smoke"):
        shipped = ROOT / "src" / "ftscale" / "study" / "configs" / f"{name}.toml"
        assert (ROOT / "examples" / f"{name}.toml").read_text() == shipped.read_text()


@pytest.mark.parametrize(
    "source", ["builtin:quickstart", "builtin:smoke", str(ROOT / "examples" / "pythia.toml")]
)
def test_plan_validates_offline_and_writes_nothing(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTSCALE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = runner.invoke(app, ["study", "plan", source, "--json"])
    if source.endswith("pythia.toml"):  # hundreds of CPU hours here: the cost needs --yes
        assert out.exit_code == 2 and "pass --yes" in out.stderr, out.output
        out = runner.invoke(app, ["study", "plan", source, "--json", "--yes"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.stdout)
    assert len(plan["runs"]) > 10
    assert list(tmp_path.iterdir()) == []
