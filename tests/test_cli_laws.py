"""`ftscale fit` and `ftscale critical`: the command-line contract other tools rely on."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ftscale.cli import app

ROOT = Path(__file__).resolve().parent.parent
PILOT = ROOT / "examples" / "pilot-en-de.csv"
runner = CliRunner()

FIT_KEYS = {
    "form",
    "group",
    "space",
    "params",
    "objective",
    "n_fit",
    "n_heldout",
    "delta_e",
    "delta_h",
    "intervals",
}


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def two_method_table(tmp_path_factory):
    """A small two-method sweep with known laws: FMT steep, LoRA shallow, equal E."""
    x, d = (
        a.ravel()
        for a in np.meshgrid([1e7, 3e7, 1e8, 3e8], np.geomspace(200, 2e4, 6), indexing="ij")
    )
    rows = []
    for method, a, alpha, beta in (("fmt", 4e3, 0.35, 0.3), ("lora", 8.0, 0.12, 0.05)):
        loss = a / (x**alpha * d**beta) + 1.0
        loss *= np.exp(np.random.default_rng(len(method)).normal(0, 1e-3, loss.size))
        rows += [
            {"params": p, "examples": n, "method": method, "test_nll": v}
            for p, n, v in zip(x, d, loss, strict=True)
        ]
    path = tmp_path_factory.mktemp("tables") / "runs.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_fit_json_contract_on_the_pilot(tmp_path):
    plot = tmp_path / "fit.png"
    code, out, _ = run(
        "fit",
        PILOT,
        "--x",
        "nonembedding_params",
        "--group",
        "method",
        "--form",
        "multiplicative",
        "--form",
        "additive",
        "--holdout",
        "max:nonembedding_params",
        "--plot",
        plot,
        "--json",
    )
    assert code == 0
    fits = json.loads(out)["fits"]
    assert len(fits) == 6
    for fit in fits:
        assert set(fit) >= FIT_KEYS
        assert fit["n_fit"] == 15 and fit["n_heldout"] == 5
        assert fit["space"] == "log"
        held = [p for p in fit["points"] if p["heldout"]]
        assert len(held) == 5 and {p["nonembedding_params"] for p in held} == {787328.0}
        errors = [abs(p["predicted"] - p["observed"]) for p in held]
        assert fit["delta_h"] == pytest.approx(sum(errors) / len(errors))
    by = {(f["group"], f["form"]): f for f in fits}
    # The pilot's finding (CALIBRATION.md): at this scale the additive law predicts the held-out
    # largest model better for every method.
    for method in ("fmt", "lora", "prompt"):
        assert (
            by[(method, "additive")]["delta_h"] <= by[(method, "multiplicative")]["delta_h"] + 1e-3
        )
    assert by[("fmt", "additive")]["delta_h"] < by[("fmt", "multiplicative")]["delta_h"]
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_fit_table_output_and_bootstrap_intervals(two_method_table):
    code, out, _ = run(
        "fit", two_method_table, "--x", "params", "--group", "method", "--bootstrap", "30", "--json"
    )
    assert code == 0
    fits = json.loads(out)["fits"]
    for fit in fits:
        for name, (low, high) in fit["intervals"].items():
            assert low <= fit["params"][name] <= high
    code, out, _ = run("fit", two_method_table, "--x", "params", "--group", "method")
    assert code == 0 and "multiplicative" in out and "beta=" in out


def test_critical_from_table_and_from_saved_fit(two_method_table, tmp_path):
    code, out, _ = run(
        "critical",
        two_method_table,
        "--x",
        "params",
        "--at",
        "1e8",
        "--json",
        "--plot",
        tmp_path / "critical.png",
    )
    assert code == 0
    (point,) = json.loads(out)["critical"]
    assert (point["first"], point["second"], point["x"]) == ("fmt", "lora", 1e8)
    assert len(point["crossings"]) == 1
    # Equal E up to noise is not exactly equal: the closed form is only that of the reducible
    # parts, and says so.
    assert point["H"] is not None and "E differs" in point["closed_form_note"]
    saved = tmp_path / "fits.json"
    assert (
        run("fit", two_method_table, "--x", "params", "--group", "method", "--save", saved)[0] == 0
    )
    code, out, _ = run("critical", saved, "--at", "1e8", "--json")
    assert code == 0
    assert json.loads(out)["critical"][0]["crossings"] == pytest.approx(point["crossings"])
    code, out, _ = run("critical", saved)
    assert code == 0 and "fmt vs lora" in out
    assert (tmp_path / "critical.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "missing.csv"], "missing.csv: no such file"),
        (["fit", PILOT, "--y", "loss"], "column 'loss' not found"),
        (
            ["fit", PILOT, "--x", "nonembedding_params", "--holdout", "biggest"],
            "holdout rule 'biggest' not understood",
        ),
        (["fit", PILOT, "--x", "nonembedding_params", "--holdout", "model=m512"], "matches no row"),
        (["fit", PILOT, "--form", "quadratic"], "unknown law form 'quadratic'"),
        (["fit", PILOT, "--form", "additive"], "form 'additive' needs an X column (--x)"),
        (["fit", PILOT, "--space", "sqrt"], "--space must be one of log, linear"),
        (["fit", PILOT, "--group", "method", "--plot", "/nonexistent/dir/f.png"], "does not exist"),
        (
            [
                "critical",
                PILOT,
                "--x",
                "nonembedding_params",
                "--group",
                "model",
                "--d-min",
                "5",
                "--d-max",
                "1",
            ],
            "0 < min < max",
        ),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(args, message):
    code, out, err = run(*args)
    assert code == 2
    assert message in err
    assert err.startswith("ftscale: error: ")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err


def test_bad_json_fit_file(tmp_path):
    bad = tmp_path / "fits.json"
    bad.write_text("{not json")
    code, _, err = run("critical", bad)
    assert code == 2 and "not valid JSON" in err


def test_installed_command_exits_2_without_traceback(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "ftscale", "fit", str(empty)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"ftscale: error: {empty}: file is empty"
