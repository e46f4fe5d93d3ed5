"""Study analysis: run tables, fits, permutation tests, figures, report, CLI."""

import json

import numpy as np
import pytest

from hf_collapse import cli
from hf_collapse.study.analysis import (
    analyze,
    collect_runs,
    correlations,
    linear_fit,
    permutation_test,
    read_csv_rows,
    read_run,
)


def _synthetic_rows(n=24, seed=0, slope=2.0, noise=0.05):
    """Planted: nc1_cdnv = 0.5 + slope * loss + noise; nc2_equinorm_cov independent noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        width, depth, epochs = [16, 32, 64][i % 3], [1, 2][i // 3 % 2], [1, 3][i // 6 % 2]
        loss = 3.0 - 0.3 * np.log2(width / 16) - 0.2 * depth - 0.1 * epochs + rng.normal(0, 0.05)
        rows.append(
            {
                "name": f"run{i}",
                "width": width,
                "depth": depth,
                "epochs": epochs,
                "seed": i,
                "num_parameters": width * width * depth * 12,
                "val_loss": float(loss),
                "nc1_cdnv": float(0.5 + slope * loss + rng.normal(0, noise)),
                "nc2_equinorm_cov": float(rng.normal(1.0, 0.1)),
                "nc3_duality_mean": float(1.0 - 0.2 * loss + rng.normal(0, noise)),
            }
        )
    return rows


def test_linear_fit_recovers_planted_line():
    rows = _synthetic_rows(n=60, noise=0.01)
    loss = [r["val_loss"] for r in rows]
    fit = linear_fit(loss, [r["nc1_cdnv"] for r in rows])
    assert fit["slope"] == pytest.approx(2.0, rel=0.05)
    assert fit["intercept"] == pytest.approx(0.5, abs=0.2)
    expected_r2 = np.var(2.0 * np.array(loss)) / (np.var(2.0 * np.array(loss)) + 0.01**2)
    assert fit["r2"] == pytest.approx(expected_r2, abs=0.01) and fit["r2"] > 0.99
    noisy = linear_fit(loss, [r["nc2_equinorm_cov"] for r in rows])
    assert noisy["r2"] < 0.15


def test_permutation_test_planted_effect_and_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=21)  # 21 replicas as in Table 1
    effect = 0.8 * x + rng.normal(0, 0.5, size=21)
    noise = rng.normal(size=21)
    assert permutation_test(x, effect, 10_000, seed=0) < 0.05
    assert permutation_test(x, noise, 10_000, seed=0) > 0.05
    # seeded: same p-value twice; p is never 0 (1 + hits over 1 + B)
    assert permutation_test(x, noise, 2000, seed=3) == permutation_test(x, noise, 2000, seed=3)
    assert permutation_test(x, 3 * x, 999, seed=0) == pytest.approx(1 / 1000)
    # calibration: under the null, p < 0.05 in about 5% of data sets
    ps = [permutation_test(rng.normal(size=12), rng.normal(size=12), 400, seed=s) for s in range(100)]
    assert 0.0 <= np.mean(np.array(ps) < 0.05) <= 0.15


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="at least 3"):
        linear_fit([1, 2], [1, 2])
    with pytest.raises(ValueError, match="equal length"):
        permutation_test([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        linear_fit([1, 2, float("nan")], [1, 2, 3])
    rows = _synthetic_rows(6)
    rows[0]["val_loss"] = None
    with pytest.raises(ValueError, match="validation loss"):
        correlations(rows)


def test_analyze_writes_table_report_and_figures(tmp_path):
    rows = _synthetic_rows()
    result = analyze(rows, tmp_path, num_permutations=2000)
    fits = {f["metric"]: f for f in result["fits"]}
    assert fits["nc1_cdnv"]["p_value"] < 0.05 and fits["nc1_cdnv"]["r2"] > 0.9
    assert fits["nc2_equinorm_cov"]["p_value"] > 0.05
    names = {p.name for p in result["figures"]}
    assert {"nc_vs_val_loss.png", "scaling_width.png", "scaling_depth.png", "scaling_epochs.png"} <= names
    for p in result["figures"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    report = (tmp_path / "report.md").read_text()
    assert "![nc_vs_val_loss](nc_vs_val_loss.png)" in report and "nc1_cdnv" in report
    back = read_csv_rows(tmp_path / "runs.csv")
    assert len(back) == len(rows) and back[0]["nc1_cdnv"] == pytest.approx(rows[0]["nc1_cdnv"])
    # planted: cdnv rises with loss (-> collapse with lower loss), duality falls with loss (-> collapse)
    assert set(result["direction"]["agree"]) >= {"nc1_cdnv", "nc3_duality_mean"}


def _write_run(folder, metrics, run=None, state=None):
    (folder / "collapse").mkdir(parents=True)
    (folder / "collapse" / "metrics.json").write_text(json.dumps(metrics))
    if run is not None:
        (folder / "run.json").write_text(json.dumps(run))
    if state is not None:
        (folder / "trainer_state.json").write_text(json.dumps(state))


def test_collect_runs_from_folders_and_cli(tmp_path, capsys):
    runs = tmp_path / "runs"
    for i, r in enumerate(_synthetic_rows(6)):
        metrics = {k: r[k] for k in ("nc1_cdnv", "nc2_equinorm_cov", "nc3_duality_mean")}
        if i % 2:  # loss in metrics.json, or else the last eval_loss in trainer_state.json
            metrics["eval_loss"] = r["val_loss"]
            _write_run(runs / r["name"], metrics, run={k: r[k] for k in ("name", "width", "depth", "epochs")})
        else:
            _write_run(
                runs / r["name"],
                metrics,
                state={"log_history": [{"eval_loss": 9.0}, {"loss": 1.0}, {"eval_loss": r["val_loss"]}]},
            )
    rows = collect_runs([runs])
    assert len(rows) == 6
    assert rows[0]["val_loss"] == pytest.approx(_synthetic_rows(6)[0]["val_loss"])
    assert rows[1]["width"] == 32 and "nc1_cdnv" in rows[1]
    with pytest.raises(FileNotFoundError, match="not a measured run"):
        read_run(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["analyze", str(runs), "--output-dir", str(out), "--permutations", "500"]) == 0
    assert (out / "report.md").is_file() and (out / "runs.csv").is_file()
    assert "nc1_cdnv" in capsys.readouterr().out
    assert cli.main(["analyze", str(tmp_path / "nothing")]) == 1


def _replica_table(n=21, seed=5):
    """Seed replicas of one configuration: a planted association (cdnv) and none (equinorm)."""
    rng = np.random.default_rng(seed)
    loss = 2.9 + rng.normal(0, 0.01, size=n)
    return [
        {
            "name": f"TinyStories-2x768_1Ld{i}",
            "width": 768,
            "depth": 2,
            "epochs": 1,
            "weight_decay": 0.0005,
            "seed": 0,
            "data_seed": i,
            "num_parameters": 1000,
            "val_loss": float(loss[i]),
            "nc1_cdnv": float(5 + 40 * (loss[i] - 2.9) + rng.normal(0, 0.3)),
            "nc2_equinorm_cov": float(rng.normal(1.0, 0.1)),
        }
        for i in range(n)
    ]


def _r2_independent(x, y):
    """R^2 as 1 - SS_res / SS_tot of a numpy polyfit line (not Pearson's r, not scipy)."""
    x, y = np.asarray(x), np.asarray(y)
    slope, intercept = np.polyfit(x, y, 1)
    return 1 - np.sum((y - intercept - slope * x) ** 2) / np.sum((y - y.mean()) ** 2)


def _p_brute_force(x, y, perms, rng):
    """Two-sided p of Pearson's r, one permutation at a time: (1 + #{|r_perm| >= |r_obs|}) / (1 + B)."""
    r_obs = abs(np.corrcoef(x, y)[0, 1])
    hits = sum(abs(np.corrcoef(x, rng.permutation(y))[0, 1]) >= r_obs - 1e-12 for _ in range(perms))
    return (1 + hits) / (1 + perms)


def test_seed_replica_analysis_reproduces_r2_exactly_and_p_within_noise(tmp_path):
    rows = _replica_table()
    result = analyze(rows, tmp_path, num_permutations=10_000, seed=0)
    assert result["design"]["seed_replicas"] and result["design"]["seeds"] == 21
    fits = {f["metric"]: f for f in result["fits"]}
    loss = [r["val_loss"] for r in rows]
    rng = np.random.default_rng(123)  # an independent stream of permutations
    for key in ("nc1_cdnv", "nc2_equinorm_cov"):
        vals = [r[key] for r in rows]
        assert fits[key]["r2"] == pytest.approx(_r2_independent(loss, vals), rel=1e-10, abs=1e-12)
        p_ref = _p_brute_force(np.array(loss), np.array(vals), 4000, rng)
        noise = 4 * np.sqrt(max(p_ref, 1e-3) * (1 - p_ref) * (1 / 4000 + 1 / 10_000))
        assert abs(fits[key]["p_value"] - p_ref) <= noise + 2e-4, (key, fits[key]["p_value"], p_ref)
    assert fits["nc1_cdnv"]["p_value"] < 0.05 < fits["nc2_equinorm_cov"]["p_value"]
    # seeded: the same table and seed give the same p
    assert (
        correlations(rows, ["nc1_cdnv"], 500, seed=7)[0]["p_value"]
        == correlations(rows, ["nc1_cdnv"], 500, seed=7)[0]["p_value"]
    )
    report = (tmp_path / "report.md").read_text()
    assert "Design: seed replicas: 21 runs of one configuration (2x768" in report
    # the Table 1 layout carries the paper's numbers as printed, our p in bold when < 0.05
    assert "| NC1 | Within-Class Variability Collapse | `nc1_cdnv` |" in report
    assert "| 0.192011 | **0.0485** |" in report and "| 0.026174 | 0.4870 |" in report
    assert f"**{fits['nc1_cdnv']['p_holm']:.4f}**" in report  # bold follows the Holm-adjusted p
    assert "| `nc4_agreement` | not measured |" in report
    assert "POOLED" not in report
    header = (tmp_path / "correlations.csv").read_text().splitlines()[0]
    assert header == "metric,n,r2,r,slope,intercept,p_value,p_holm,p_bh,num_permutations,exact"


def test_exact_permutation_test_when_all_orderings_fit():
    """n! <= B: every ordering once, p = #{|r_perm| >= |r_obs|} / n! (identity included)."""
    import itertools

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=6), rng.normal(size=6)
    r_obs = abs(np.corrcoef(x, y)[0, 1])
    hits = sum(abs(np.corrcoef(x, y[list(p)])[0, 1]) >= r_obs - 1e-12 for p in itertools.permutations(range(6)))
    assert permutation_test(x, y, 10_000, seed=0) == pytest.approx(hits / 720, abs=1e-12)
    assert permutation_test(x, y, 10_000, seed=0) == permutation_test(x, y, 10_000, seed=99)  # no randomness


def test_design_pooled_grid_and_confounding(tmp_path, capsys):
    from hf_collapse.study.analysis import confounded_factors, study_design

    rows = _synthetic_rows(12)
    design = study_design(rows)
    assert not design["seed_replicas"] and set(design["varying"]) == {"width", "depth", "epochs"}
    # the default demo grid: each width at one depth -> depth is confounded with width, not the reverse
    grid = [{"width": w, "depth": d, "epochs": e} for d, w in [(1, 32), (2, 64), (2, 128)] for e in (1, 3)]
    assert confounded_factors(grid) == [("depth", "width")]
    assert study_design([{**r, "seed": 0} for r in _replica_table(4)])["seed_replicas"]
    missing = [{k: v for k, v in r.items() if k != "epochs"} for r in _replica_table(4)]
    assert study_design(missing)["label"].startswith("unchecked: epochs")
    result = analyze(rows, tmp_path, num_permutations=200)
    report = (tmp_path / "report.md").read_text()
    assert "Design: pooled: the 12 runs differ in width, depth, epochs" in report and "POOLED" in report
    assert result["design"]["label"].startswith("pooled")
    # analyze from the command line warns on stderr before the numbers
    runs_csv = tmp_path / "runs.csv"
    assert cli.main(["analyze", str(runs_csv), "--output-dir", str(tmp_path / "again"), "--permutations", "100"]) == 0
    captured = capsys.readouterr()
    assert "note: pooled: the 12 runs differ in width, depth, epochs" in captured.err
    assert "design: pooled" in captured.out


def test_fewer_than_three_runs(tmp_path):
    rows = _synthetic_rows(2)
    with pytest.raises(ValueError, match="at least 3 runs, got 2") as err:
        analyze(rows, tmp_path)
    assert "train more" in str(err.value) and "hf-collapse demo" in str(err.value)  # what to do next
    result = analyze(rows, tmp_path, allow_few_runs=True)
    assert result["fits"] == [] and "fits not available" in result["direction"]["fits_not_available"]
    assert "fits not available" in (tmp_path / "report.md").read_text()
    assert len((tmp_path / "runs.csv").read_text().strip().splitlines()) == 3


def test_figure_labels_say_the_collapse_direction_and_factor_values():
    from hf_collapse.integrations.plots import axis_label
    from hf_collapse.study.figures import factor_value

    assert axis_label("nc1_cdnv").endswith("↓ lower = more collapsed")
    assert axis_label("nc4_agreement").endswith("higher = more collapsed")
    assert "nats/token" in axis_label("val_loss") and "no collapse direction" in axis_label("nc2_norm_mean")
    assert (factor_value("epochs", 1.0), factor_value("epochs", 3), factor_value("width", 64)) == (
        "1 epoch",
        "3 epochs",
        "width 64",
    )


# ---------------------------------------------------------------------------------------------
# multiple comparisons


def test_holm_and_benjamini_hochberg_against_hand_computed_values():
    from hf_collapse.study.analysis import benjamini_hochberg, holm

    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max 0.02, 0.03, 0.06, 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    # BH: p_(i) m / i = 0.02, 0.02, 0.04, 0.04; running min from the largest down: 0.02, 0.02, 0.04, 0.04
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02], abs=1e-15)
    assert list(holm([0.5, 0.6])) == [1.0, 1.0] and list(holm([0.02])) == [0.02]  # capped at 1; one test: raw
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        holm([0.2, 1.5])


def test_correlations_report_adjusted_p_and_stars_follow_holm(tmp_path):
    from hf_collapse.study.analysis import benjamini_hochberg, holm, star
    from hf_collapse.study.design import table1

    rows = _synthetic_rows(12)
    result = analyze(rows, tmp_path, num_permutations=500)
    raw = [f["p_value"] for f in result["fits"]]
    assert [f["p_holm"] for f in result["fits"]] == pytest.approx(list(holm(raw)))
    assert [f["p_bh"] for f in result["fits"]] == pytest.approx(list(benjamini_hochberg(raw)))
    csv_rows = read_csv_rows(tmp_path / "correlations.csv")
    assert [c["p_holm"] for c in csv_rows] == pytest.approx(list(holm(raw)))
    report = (tmp_path / "report.md").read_text()
    assert "| p_value | p_holm | p_bh |" in report and "Holm" in report and "Benjamini-Hochberg" in report
    # raw p < 0.05 but not after Holm: no star, no bold
    fit = {"metric": "nc1_cdnv", "r2": 0.3, "r": 0.55, "p_value": 0.01, "p_holm": 0.08, "p_bh": 0.04}
    assert star(fit) == "" and star({**fit, "p_holm": 0.03}) == " *"
    line = next(t for t in table1([fit], True).splitlines() if "`nc1_cdnv`" in t)
    assert "| 0.0100 | 0.0800 |" in line and "**0.0100**" not in line


# ---------------------------------------------------------------------------------------------
# figures, read from the matplotlib objects


@pytest.fixture
def closed_figures(monkeypatch):
    """Figures the plotting functions close, kept (and drawn, so that offset texts are laid out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept, close = [], plt.close

    def keep(fig=None):
        if fig is not None and hasattr(fig, "canvas"):
            fig.canvas.draw()
            kept.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return kept


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def _offsets(fig):
    return [t for ax in fig.axes for a in (ax.xaxis, ax.yaxis) if (t := a.get_offset_text().get_text())]


def _decade_rows():
    """A grid whose CDNV spans three decades (as the demo's 978 -> 6.2) and whose duality sits near 1.284
    with tiny differences (which matplotlib would print as an offset "+1.284")."""
    rows = _synthetic_rows(6)
    for i, r in enumerate(rows):
        r["nc1_cdnv"] = [978.0, 150.0, 40.0, 12.0, 8.0, 6.2][i]
        r["nc3_duality_mean"] = 1.28400 + 1e-6 * i
        r.update(data="built-in procedural stories (300 train / 50 validation)", vocab_size=512, model_type="gpt_neo")
    return rows


def test_study_figures_log_axes_labels_titles_and_no_offsets(tmp_path, closed_figures):
    from hf_collapse.integrations.plots import axis_label

    result = analyze(_decade_rows(), tmp_path, num_permutations=100)
    assert {p.name for p in result["figures"]} >= {"nc_vs_val_loss.png", "scaling_width.png"}
    assert len(closed_figures) == len(result["figures"])
    for fig in closed_figures:
        title = fig.get_suptitle()
        assert "gpt_neo" in title and "vocabulary 512" in title and "built-in procedural stories" in title
        assert _offsets(fig) == []
        panels = {ax.get_ylabel(): ax for ax in _panels(fig)}
        cdnv = panels[axis_label("nc1_cdnv")]
        assert cdnv.get_yscale() == "log"  # spans 158x
        assert "variance ratio" in cdnv.get_ylabel() and "lower = more collapsed" in cdnv.get_ylabel()
        assert panels[axis_label("nc2_equinorm_cov")].get_yscale() == "linear"
        assert all(ax.get_ylabel() for ax in _panels(fig))
    scatter = closed_figures[0]
    titles = [ax.get_title() for ax in _panels(scatter)]
    assert all("Holm" in t and "BH" in t for t in titles)


def test_trajectory_figure_labels_title_log_axis_and_legend(closed_figures, tmp_path):
    from hf_collapse.integrations.plots import axis_label
    from hf_collapse.integrations.trajectory import plot_trajectory

    rows = [
        {
            "checkpoint": f"checkpoint-{s}",
            "step": s,
            "weights_sha256": str(s),
            "duplicate_of": None,
            "nc1_cdnv": c,
            "nc3_duality_mean": 1.284 + 1e-6 * i,
            "eval_loss": 3.0 - 0.1 * i,
        }
        for i, (s, c) in enumerate([(10, 900.0), (20, 60.0), (30, 7.0)])
    ]
    path = plot_trajectory(rows, tmp_path / "t.png", model="runs/TinyStories-2x64_1H", data="train-head.txt")
    assert path.is_file()
    (fig,) = closed_figures
    assert "runs/TinyStories-2x64_1H" in fig.get_suptitle() and "train-head.txt" in fig.get_suptitle()
    panels = {ax.get_ylabel(): ax for ax in _panels(fig)}
    assert set(panels) == {axis_label("nc1_cdnv"), axis_label("nc3_duality_mean"), axis_label("eval_loss")}
    assert panels[axis_label("nc1_cdnv")].get_yscale() == "log"
    assert "higher = more collapsed" in axis_label("nc3_duality_mean")
    assert _offsets(fig) == [] and fig.legends == []  # no one-entry legend when nothing is duplicated
    rows[2]["duplicate_of"] = "checkpoint-20"
    plot_trajectory(rows, tmp_path / "t.png")
    assert len(closed_figures[1].legends[0].get_texts()) == 2


def test_model_card_histogram_counts_classes_in_whole_numbers(closed_figures, tmp_path):
    import torch

    from hf_collapse.integrations.model_card import plot_per_class

    per_class = {
        "count": torch.tensor([5.0, 50.0, 500.0, 7.0]),
        "mean_norm": torch.tensor([1.0, 1.1, 1.2, 1.3]),
        "cdnv_row_mean": torch.tensor([0.01, 0.02, 0.5, 3.0]),
    }
    assert plot_per_class(per_class, tmp_path / "f.png", title="stories260K, measured on x.txt")
    (fig,) = closed_figures
    hist = fig.axes[1]
    ticks = [t for t in hist.get_yticks() if hist.get_ylim()[0] <= t <= hist.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert hist.get_ylabel() == "number of classes" and _offsets(fig) == []
    assert "stories260K" in fig.get_suptitle()


# ---------------------------------------------------------------------------------------------
# runs that cannot be pooled; outputs of an earlier analysis


def test_analyze_refuses_runs_of_different_data_or_vocabulary(tmp_path):
    rows = _decade_rows()
    rows[4]["data"] = rows[5]["data"] = "tinystories/train-head.txt (600 stories)"
    with pytest.raises(ValueError, match=r"^the runs differ in data \(run0, run1, run2 and 1 more: .*run4, run5:"):
        analyze(rows, tmp_path)
    rows = _decade_rows()
    rows[0]["vocab_size"] = 50257
    with pytest.raises(ValueError, match=r"differ in vocab_size \(run0: 50257; run1, run2, run3 and 2 more: 512\)"):
        analyze(rows, tmp_path)
    # from run folders: data from run.json, the vocabulary from config.json
    runs = tmp_path / "runs"
    for i, r in enumerate(_synthetic_rows(3)):
        _write_run(runs / r["name"], {"nc1_cdnv": r["nc1_cdnv"], "eval_loss": r["val_loss"]}, run={"data": "x"})
        (runs / r["name"] / "config.json").write_text(json.dumps({"vocab_size": 512 if i else 1024}))
    assert cli.main(["analyze", str(runs), "--output-dir", str(tmp_path / "out")]) == 1
    assert collect_runs([runs])[0]["vocab_size"] == 1024 and collect_runs([runs])[1]["data"] == "x"


def test_analyze_removes_an_earlier_analysis_figures(tmp_path):
    analyze(_synthetic_rows(12), tmp_path, num_permutations=50)
    assert (tmp_path / "scaling_depth.png").is_file()
    replicas = _replica_table(4)
    result = analyze(replicas, tmp_path, num_permutations=50)  # one configuration: no scaling figures
    assert [p.name for p in result["figures"]] == ["nc_vs_val_loss.png"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["nc_vs_val_loss.png"]
    analyze(replicas[:2], tmp_path, allow_few_runs=True)  # no fits: no figures, no correlations.csv
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "correlations.csv").exists()
