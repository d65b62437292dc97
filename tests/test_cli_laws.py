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
    # The calibration pilot's finding: at this scale the additive law predicts the held-out
    # largest model better for every method.
    for method in ("fmt", "lora", "prompt"):
        assert (
            by[(method, "additive")]["delta_h"] <= by[(method, "multiplicative")]["delta_h"] + 1e-3
        )
    assert by[("fmt", "additive")]["delta_h"] < by[("fmt", "multiplicative")]["delta_h"]
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_middle_holdout_from_the_command_line():
    code, out, err = run(
        "fit", PILOT, "--x", "nonembedding_params", "--holdout", "middle:nonembedding_params",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    sizes = sorted(pd.read_csv(PILOT)["nonembedding_params"].unique())
    assert len(sizes) == 4
    for fit in json.loads(out)["fits"]:
        held = {p["nonembedding_params"] for p in fit["points"] if p["heldout"]}
        assert held == {float(sizes[2])}  # of four sizes, the upper middle one
    # The axis of the form selection is the rule's column, interpolated (interior values).
    assert all(s["direction"] == "eq" for s in json.loads(out)["selection"])


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


# -- issue 9/10/11: forms from the command line, outputs never lost, JSON tables ----------------

FORM_FILE = """
from ftscale.laws import custom_form

SHIFTED = custom_form(
    "shifted",
    lambda p, d: p["A"] / (d + p["D0"]) ** p["beta"] + p["E"],
    params=("a", "d0", "beta", "e"),
    log_params={"a": "A", "d0": "D0", "e": "E"},
    grid={"a": [0, 3, 6], "d0": [0, 4, 8], "beta": [0.2, 0.6], "e": [-1, 0, 0.5]},
    register=False,
)
"""


def test_user_forms_from_the_command_line(two_method_table, tmp_path):
    forms = tmp_path / "myforms.py"
    forms.write_text(FORM_FILE)
    code, out, err = run(
        "fit", two_method_table, "--form", f"{forms}:SHIFTED", "--form",
        "expr:A / D^beta + E", "--json",
    )  # fmt: skip
    assert code == 0, err
    fits = json.loads(out)["fits"]
    assert {f["form"] for f in fits} == {"shifted", "expr:A / D^beta + E"}
    assert {f["group"] for f in fits} == {"fmt", "lora"}  # grouped by method by default
    assert all(set(f["params"]) >= {"A", "beta", "E"} for f in fits)
    assert all("ignores --x" not in w for f in fits for w in f["warnings"])


def test_mixed_form_plot_and_selection_in_json(two_method_table, tmp_path):
    plot = tmp_path / "mixed.png"
    code, out, err = run(
        "fit", two_method_table, "--x", "params", "--form", "power", "--form", "multiplicative",
        "--holdout", "max:params", "--plot", plot, "--json",
    )  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    power = [f for f in document["fits"] if f["form"] == "power"]
    ignored = "ignores --x params: the same curve for every params"
    assert all(ignored in f["warnings"] for f in power)
    for selection in document["selection"]:
        assert selection["form"] == "multiplicative" and selection["folds"]
        chosen = [f for f in document["fits"] if f["group"] == selection["group"] and f["selected"]]
        assert [f["form"] for f in chosen] == ["multiplicative"]
        assert chosen[0]["selection_score"] == pytest.approx(selection["scores"]["multiplicative"])


def test_a_failing_plot_keeps_the_fits(two_method_table, tmp_path, monkeypatch):
    import ftscale.report.figures as figures

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(figures, "plot_fits", broken)
    save = tmp_path / "fits.json"
    code, out, err = run("fit", two_method_table, "--x", "params", "--plot",
                         tmp_path / "f.png", "--save", save)  # fmt: skip
    assert code == 3
    assert "multiplicative" in out  # the table reached the user
    assert json.loads(save.read_text())["fits"]  # and the saved fit was written first
    assert "could not draw the figure" in err and "renderer exploded" in err
    assert not (tmp_path / "f.png").exists()


def test_a_failing_save_is_rescued(two_method_table, tmp_path, monkeypatch):
    import ftscale.laws.io as io

    real = io.write_text_atomic
    target = tmp_path / "fits.json"

    def refuse(path, text):
        if path == target:
            raise OSError(28, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(io, "write_text_atomic", refuse)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "rescue"))
    (tmp_path / "rescue").mkdir()
    code, _, err = run("fit", two_method_table, "--x", "params", "--save", target)
    assert code == 3
    assert "No space left on device" in err and "saved it to" in err
    (rescued,) = (tmp_path / "rescue").iterdir()
    assert json.loads(rescued.read_text())["fits"]


def test_critical_reads_json_records_and_flags_x_extrapolation(two_method_table, tmp_path):
    frame = pd.read_parquet(two_method_table)
    records = tmp_path / "runs.json"
    records.write_text(frame.to_json(orient="records"))
    code, out, err = run("critical", records, "--x", "params", "--at", "1e8", "--at", "1e11",
                         "--json")  # fmt: skip
    assert code == 0, err
    near, far = json.loads(out)["critical"]
    assert near["x_extrapolated"] is False and far["x_extrapolated"] is True
    assert all(far["extrapolated"])
    lines = tmp_path / "lines.json"
    lines.write_text(frame.to_json(orient="records", lines=True))
    assert run("critical", lines, "--x", "params", "--at", "1e8", "--json")[0] == 0


def test_errors_give_the_file_row_counted_from_one(tmp_path):
    table = tmp_path / "runs.csv"
    rows = ["method,examples,test_nll"] + [f"a,{d},{3 - i * 0.1}" for i, d in
                                           enumerate((100, 200, 400, 800))]  # fmt: skip
    rows += ["b,100,3.0", "b,0,2.9", "b,400,2.8", "b,800,2.7"]
    table.write_text("\n".join(rows) + "\n")
    code, _, err = run("fit", table)
    assert code == 2
    assert "method=b, form power: size 'examples' must be positive, got 0 at row 6" in err


def test_fit_reports_the_ensemble_row_and_the_default_prediction(two_method_table):
    args = ["fit", two_method_table, "--x", "params", "-f", "multiplicative", "-f", "power"]
    code, out, _ = run(*args, "--holdout", "max:params", "--predict", "1e9,1e4", "--json")
    assert code == 0
    document = json.loads(out)
    ensembles = {e["group"]: e for e in document["ensemble"]}
    assert set(ensembles) == {"fmt", "lora"}
    for e in ensembles.values():
        assert sum(e["weights"].values()) == pytest.approx(1.0)
        assert e["used"] in ("ensemble", "multiplicative", "power") and e["reason"]
        assert e["predictions"][0]["predicted"] > 0
    code, out, _ = run(*args, "--holdout", "max:params", "--prediction", "ensemble")
    assert code == 0
    assert "default prediction for fmt: ensemble (--prediction ensemble)" in out
    assert "ensemble" in out and "weights" in out


def test_critical_gives_ensembles_intervals_and_a_saved_fit_keeps_its_ensembles(
    two_method_table, tmp_path
):
    """`critical` crosses each group's default prediction; an ensemble's crossing gets an
    interval from its forms' replicates, and a fit saved with its ensembles gives `critical`
    the same predictions, crossings and intervals as the table it came from."""
    saved = tmp_path / "fits.json"
    forms = ["--x", "params", "-f", "multiplicative", "-f", "power", "--holdout", "max:params"]
    fitting = [*forms, "--bootstrap", "12", "--prediction", "ensemble"]
    code, _, err = run("fit", two_method_table, *fitting, "--save", saved, "--quiet")
    assert code == 0, err
    code, out, err = run("critical", two_method_table, *fitting, "--at", "1e8", "--json")
    assert code == 0, err
    direct = json.loads(out)
    (point,) = direct["critical"]
    assert point["forms"] == {"fmt": "ensemble", "lora": "ensemble"}
    assert point["interval"][0] <= point["crossings"][0] <= point["interval"][1]
    assert 0 < point["crossing_share"] <= 1
    assert [p["used"] for p in direct["prediction"]] == ["ensemble", "ensemble"]
    code, out, err = run("critical", saved, "--at", "1e8", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["prediction"] == direct["prediction"]
    (back,) = again["critical"]
    for key in ("forms", "crossing_share", "leader", "interval"):  # replicates saved exactly
        assert back[key] == point[key]
    # The laws' parameters are saved as reported values (exp of their logs): equal to 1e-12.
    assert back["crossings"] == pytest.approx(point["crossings"], rel=1e-12)
    code, out, _ = run("critical", saved, "--at", "1e8")
    assert code == 0 and "default prediction for fmt: ensemble (--prediction ensemble)" in out
    # Asking a saved fit for one form crosses that form's fits alone.
    code, out, _ = run("critical", saved, "--at", "1e8", "-f", "multiplicative", "--json")
    assert code == 0
    (alone,) = json.loads(out)["critical"]
    assert alone["forms"] == {"fmt": "multiplicative", "lora": "multiplicative"}
    assert json.loads(out)["prediction"] == []


def test_fit_plot_draws_each_groups_ensemble_with_its_band(two_method_table, tmp_path):
    """`fit --plot` with several forms: each panel has the ensemble's curve per X with its
    mixture interval as a band, and the legend marks the default prediction."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from ftscale.laws import fit_table
    from ftscale.report import figures

    frame = pd.read_parquet(two_method_table)
    fits = fit_table(
        {c: frame[c].to_numpy() for c in frame.columns},
        y="test_nll",
        d="examples",
        x="params",
        forms=["multiplicative", "power"],
        holdout="max:params",
        n_bootstrap=12,
        prediction="ensemble",
    )
    ensemble = next(e for e in fits.ensembles if e.group == "fmt")
    fig, ax = plt.subplots()
    figures._panel(ax, [r for r in fits if r.group == "fmt"], ["multiplicative", "power"], ensemble)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert any(label.startswith("ensemble (default): Δe=") for label in labels)
    assert not any("(default)" in label for label in labels if label.startswith("power"))
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == len(np.unique(ensemble.sizes[:, 0])) == 4
    plt.close(fig)
    plot = tmp_path / "fit.png"
    args = ["--x", "params", "-f", "multiplicative", "-f", "power", "--bootstrap", "8"]
    code, _, err = run("fit", two_method_table, *args, "--plot", plot, "--quiet")
    assert code == 0, err
    assert plot.read_bytes()[:4] == b"\x89PNG"
