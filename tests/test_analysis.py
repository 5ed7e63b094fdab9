"""Plots and tables (`mnv2_jax.analysis.figures`, `mnv2 plot`) on synthetic sweep roots with known values:
seeds are aggregated, unfinished runs are reported and skipped, every figure is written, the table
holds the synthetic numbers, and the wandb loader gives the same records as the workdir loader."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics

import pytest

from mnv2_jax import accounting, cli, spec
from mnv2_jax import workdir as workdir_lib
from mnv2_jax.analysis import figures, records, tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Published TF-Slim top-1 (EMA) of a corner of the width x resolution grid.
TOP1 = {(0.35, 96): 0.455, (0.35, 160): 0.557, (1.0, 96): 0.603, (1.0, 160): 0.688}
SEED1_TOP1 = 0.692  # a second seed of 1.0/160
STEPS = (100, 200, 300, 400)
EVAL_STEPS = (200, 400)
IMAGES_PER_SEC = (12.0, 100.0, 110.0, 120.0)  # the first window includes the compile
# fig6 ablations at 1.0/224 (final EMA top-1; the curves rise linearly to it).
ACTIVATION_TOP1 = {"linear": 0.72, "relu6": 0.70}
RESIDUAL_TOP1 = {"bottleneck": 0.72, "expansion": 0.705, "none": 0.69}
EXPANSION_TOP1 = {(0.35, 2.0): 0.52, (0.35, 6.0): 0.60, (1.0, 2.0): 0.66, (1.0, 6.0): 0.718}


def counts(width=1.0, resolution=224, expansion=6.0, **arch):
    c = accounting.count(spec.build_architecture(width=width, expansion=expansion, **arch), resolution)
    return {"madds": c.madds, "params": c.params, "params_bn": c.params_bn}


def run_summary(width, resolution, top1, seed=0, expansion=6.0, activation="linear", residual="bottleneck"):
    return {
        **counts(width, resolution, expansion, bottleneck_activation=activation, residual=residual),
        "width": width,
        "resolution": resolution,
        "expansion": expansion,
        "bottleneck_activation": activation,
        "residual": residual,
        "dataset": "imagenet2012",
        "seed": seed,
        "recipe": "slim",
        "total_steps": STEPS[-1],
        "eval/loss": 1.5,
        "eval/top1": top1 - 0.01,
        "eval/top5": 0.9,
        "eval_ema/loss": 1.4,
        "eval_ema/top1": top1,
        "eval_ema/top5": 0.91,
        "eval/time_sec": 3.0,
        "step": STEPS[-1],
        "complete": True,
    }


def run_records(top1):
    """metrics.jsonl lines: train records every 100 steps, eval at 200 and 400 (own lines, as the
    loop writes an eval-only line when evaluating between log steps)."""
    records = []
    for step, ips in zip(STEPS, IMAGES_PER_SEC):
        records.append({"step": step, "train/loss": 3.0 - step / 400, "train/images_per_sec": ips, "lr": 0.1})
        if step in EVAL_STEPS:
            frac = step / STEPS[-1]
            records.append(
                {
                    "step": step,
                    "eval/top1": frac * (top1 - 0.01),
                    "eval_ema/top1": frac * top1,
                    "eval/time_sec": 1.0,
                }
            )
    return records


def write_run(root, name, summary=None, records=(), config=None):
    workdir = os.path.join(root, name)
    os.makedirs(workdir, exist_ok=True)
    if summary is not None:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    if config is not None:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config, f)
    return workdir


def make_sweep_roots(base) -> dict[str, str]:
    """Four roots: a width x resolution grid (1.0/160 with two seeds, one incomplete run, one run
    without a summary), the two ablations of Figure 6 and an expansion sweep."""
    roots = {k: os.path.join(base, k) for k in ("grid", "fig6a", "fig6b", "expansion")}
    for (w, r), top1 in TOP1.items():
        write_run(roots["grid"], f"w{w:.2g}_r{r}_t6_s0", run_summary(w, r, top1), run_records(top1))
    write_run(
        roots["grid"], "w1_r160_t6_s1", run_summary(1.0, 160, SEED1_TOP1, seed=1), run_records(SEED1_TOP1)
    )
    half = run_summary(0.5, 96, 0.5)
    half["complete"] = False
    write_run(roots["grid"], "w0.5_r96_t6_s0", half, run_records(0.5)[:2])
    write_run(roots["grid"], "w0.5_r128_t6_s0", None, run_records(0.5)[:1], config={"total_steps": 400})
    for act, top1 in ACTIVATION_TOP1.items():
        write_run(
            roots["fig6a"], f"w1_r224_{act}", run_summary(1.0, 224, top1, activation=act), run_records(top1)
        )
    for res, top1 in RESIDUAL_TOP1.items():
        write_run(
            roots["fig6b"], f"w1_r224_{res}", run_summary(1.0, 224, top1, residual=res), run_records(top1)
        )
    for (w, t), top1 in EXPANSION_TOP1.items():
        summary = run_summary(w, 224, top1, expansion=t)
        write_run(roots["expansion"], f"w{w:g}_r224_t{t:g}_s0", summary, run_records(top1))
    return roots


@pytest.fixture
def roots(tmp_path):
    return make_sweep_roots(str(tmp_path))


def test_seeds_are_aggregated_into_mean_and_spread(roots):
    runs = records.load_runs([roots["grid"]], log=lambda _: None)
    assert sorted(r.name for r in runs) == sorted(
        ["w0.35_r96_t6_s0", "w0.35_r160_t6_s0", "w1_r96_t6_s0", "w1_r160_t6_s0", "w1_r160_t6_s1"]
    )
    points = records.aggregate(runs)
    assert len(points) == 4
    assert [p.config["madds"] for p in points] == sorted(p.config["madds"] for p in points)
    (two,) = [p for p in points if len(p.runs) == 2]
    assert (two.config["width"], two.config["resolution"], two.name) == (1.0, 160, "w1_r160_t6")
    stat = two.stat("eval_ema/top1")
    assert stat.n == 2 and sorted(two.seeds) == [0, 1]
    assert stat.mean == pytest.approx((0.688 + SEED1_TOP1) / 2)
    assert stat.std == pytest.approx(statistics.stdev([0.688, SEED1_TOP1]))
    steps, mean, std = two.curve("eval_ema/top1")
    assert list(steps) == list(EVAL_STEPS)
    assert mean[-1] == pytest.approx(stat.mean) and std[-1] == pytest.approx(stat.std)
    assert mean[0] == pytest.approx(stat.mean / 2)
    # The median of both seeds' logged images/s (the compile window is an outlier).
    assert two.images_per_sec() == pytest.approx(statistics.median(IMAGES_PER_SEC * 2))
    one = next(p for p in points if len(p.runs) == 1)
    assert one.stat("eval_ema/top1").std == 0.0
    assert one.config["madds"] == counts(one.config["width"], one.config["resolution"])["madds"]


def test_unfinished_runs_are_reported_by_name_and_skipped(roots, capsys):
    runs = records.load_runs([roots["grid"]])
    err = capsys.readouterr().err
    names = {r.name for r in runs}
    assert "w0.5_r96_t6_s0" not in names and "w0.5_r128_t6_s0" not in names
    half = next(line for line in err.splitlines() if "w0.5_r96_t6_s0" in line)
    assert "not complete" in half and "last logged step 200 of 400" in half
    missing = next(line for line in err.splitlines() if "w0.5_r128_t6_s0" in line)
    assert "no summary.json" in missing and "last logged step 100 of 400" in missing
    # Also through the command line (the plot is still written from the complete runs).
    cli.main(["plot", "table", roots["grid"]])
    captured = capsys.readouterr()
    assert "w0.5_r96_t6_s0" in captured.err and "w0.5_r128_t6_s0" in captured.err
    assert os.path.join(roots["grid"], "plots", "table.md") in captured.out


def test_runs_a_sweep_never_started_are_reported(roots, capsys):
    """The sweep root's manifest lists every run of the sweep; runs without a folder are named."""
    present = sorted(n for n in os.listdir(roots["grid"]) if not n.startswith("."))
    workdir_lib.write_sweep_manifest(
        roots["grid"],
        workdir_lib.sweep_manifest(
            sweep="grid",
            sweep_file="sweeps/grid.py",
            config="configs/mnist.py",
            project="p",
            swept_keys=["width", "resolution"],
            runs=[*present, "w0.75_r224_t6_s0"],
        ),
    )
    runs = records.load_runs([roots["grid"]])
    err = capsys.readouterr().err
    assert len(runs) == 5
    assert f"missing run w0.75_r224_t6_s0 of sweep grid: no workdir {roots['grid']}" in err
    assert not any(f"missing run {name}" in err for name in present)


def test_the_same_seed_twice_is_reported_and_counted_once(roots, tmp_path, capsys):
    copy = str(tmp_path / "copy")
    write_run(copy, "w1_r160_t6_s1", run_summary(1.0, 160, 0.5, seed=1), run_records(0.5))
    points = records.aggregate(records.load_runs([roots["grid"], copy]))
    assert "same config and seed" in capsys.readouterr().err
    two = next(p for p in points if len(p.runs) == 2)
    assert two.stat("eval_ema/top1").mean == pytest.approx((0.688 + SEED1_TOP1) / 2)


@pytest.mark.parametrize("kind", ["fig5", "fig6a", "fig6b", "expansion"])
def test_every_figure_is_written_as_png_and_svg(roots, tmp_path, kind, capsys):
    root = roots["grid" if kind == "fig5" else kind]
    out = str(tmp_path / "plots")
    cli.main(["plot", kind, root, "--out", out])
    paths = capsys.readouterr().out.split()
    assert paths == [os.path.join(out, f"{kind}.png"), os.path.join(out, f"{kind}.svg")]
    with open(paths[0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(paths[1]) as f:
        svg = f.read()
    assert "<svg" in svg
    if kind == "fig6b":  # the paper's legend
        assert all(label in svg for label in figures.RESIDUAL_LABELS.values())


def test_fig5_series_one_curve_per_resolution_and_per_width(roots):
    points = records.aggregate(records.load_runs([roots["grid"]], log=lambda _: None))
    per_resolution = figures.series(points, "width")
    assert sorted(label for label, _ in per_resolution) == ["160px", "96px"]
    for _, members in per_resolution:
        assert [p.config["width"] for p in members] == [0.35, 1.0]
    per_width = figures.series(points, "resolution")
    assert sorted(label for label, _ in per_width) == ["width 0.35", "width 1"]
    fig = figures.plot_fig5(points, "eval/top1")
    left, right = fig.axes[:2]
    assert left.get_xscale() == "log"
    assert sorted(t.get_text() for t in left.texts) == ["×0.35", "×0.35", "×1", "×1"]  # the widths
    assert sorted(t.get_text() for t in right.texts) == ["160", "160", "96", "96"]  # the resolutions


def test_reference_paper_puts_the_published_points_beside_the_runs(roots, tmp_path, capsys):
    from mnv2_jax.analysis import published

    cli.main(["plot", "table", roots["grid"], "--reference", "paper", "--out", str(tmp_path)])
    with open(tmp_path / "table.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # each point has its published counterpart (ImageNet, published architecture)
        match = published.lookup(
            {"dataset": "imagenet2012", "width": float(row["width"]), "resolution": int(row["resolution"])}
        )
        assert float(row["published_top1"]) == pytest.approx(match.top1 / 100)
    table = (tmp_path / "table.md").read_text()
    assert "| Published top-1 (%) |" in table.splitlines()[0] and published.SOURCE_URL in table
    assert "(4 of 4 rows here)" in table

    points = records.aggregate(records.load_runs([roots["grid"]], log=lambda _: None))
    fig = figures.plot_fig5(points, "eval_ema/top1", reference="paper")
    left, right = fig.axes[:2]
    # The runs' labels plus one grey curve per published resolution (left) and width (right), each
    # labelled at its end; one legend entry for the published series.
    assert {"224", "192", "128"} <= {t.get_text() for t in left.texts}
    assert {"×1.4", "×1.3", "×0.75"} <= {t.get_text() for t in right.texts}
    assert len(left.lines) - len(figures.plot_fig5(points, "eval_ema/top1").axes[0].lines) == 5
    assert sum("published" in t.get_text() for t in left.get_legend().get_texts()) == 1
    assert "grey: TF-Slim MobileNetV2 checkpoints (imagenet2012, as published)" in fig._suptitle.get_text()
    cli.main(["plot", "fig5", roots["grid"], "--reference", "paper", "--out", str(tmp_path)])
    assert os.path.exists(tmp_path / "fig5.png")

    with pytest.raises(records.AnalysisError, match="--reference applies to fig5 and table, not fig6a"):
        figures.make("fig6a", records.load_runs([roots["fig6a"]]), str(tmp_path), reference="paper")


def test_metric_switch_and_ema_fallback(roots, tmp_path, capsys):
    runs = records.load_runs([roots["fig6a"]])
    points = records.aggregate(runs)
    assert records.choose_metric(points, "eval/top1") == "eval/top1"
    for run in runs:
        del run.metrics["eval_ema/top1"]
    assert records.choose_metric(records.aggregate(runs), records.DEFAULT_METRIC) == "eval/top1"
    assert "EMA" in capsys.readouterr().err
    cli.main(["plot", "fig6a", roots["fig6a"], "--metric", "eval/top1", "--out", str(tmp_path)])
    assert os.path.exists(tmp_path / "fig6a.png")


def test_table_holds_the_synthetic_values(roots, tmp_path):
    out = str(tmp_path / "table")
    paths = figures.make("table", records.load_runs([roots["grid"]], log=lambda _: None), out)
    assert paths == [os.path.join(out, "table.md"), os.path.join(out, "table.csv")]
    with open(paths[1]) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["w0.35_r96_t6", "w0.35_r160_t6", "w1_r96_t6", "w1_r160_t6"]
    for row in rows:
        w, r = float(row["width"]), int(row["resolution"])
        expected = counts(w, r)
        assert int(row["madds"]) == expected["madds"] and int(row["params"]) == expected["params"]
        assert int(row["params_bn"]) == expected["params_bn"]
        if (w, r) == (1.0, 160):
            ema = [TOP1[(w, r)], SEED1_TOP1]
            assert row["seeds"] == "2"
        else:
            ema = [TOP1[(w, r)]]
            assert row["seeds"] == "1"
        assert float(row["top1_ema"]) == pytest.approx(statistics.fmean(ema))
        assert float(row["top1"]) == pytest.approx(statistics.fmean(ema) - 0.01)
        spread = statistics.stdev(ema) if len(ema) > 1 else 0.0
        assert float(row["top1_ema_std"]) == pytest.approx(spread)
        assert float(row["images_per_sec"]) == pytest.approx(105.0)
        assert (row["expansion"], row["bottleneck_activation"], row["residual"]) == (
            "6.0",
            "linear",
            "bottleneck",
        )
    with open(paths[0]) as f:
        md = f.read()
    lines = md.splitlines()
    assert lines[0].startswith("| Network |") and len(lines) == 2 + 4
    row = next(line for line in lines if line.startswith("| w1_r160_t6 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    mean, std = 100 * (0.688 + SEED1_TOP1) / 2, 100 * statistics.stdev([0.688, SEED1_TOP1])
    c = counts(1.0, 160)
    assert cells == [
        "w1_r160_t6",
        "1",
        "160",
        "6",
        "linear",
        "bottleneck",
        "2",
        f"{mean:.2f} ± {std:.2f}",
        f"{mean - 1:.2f} ± {std:.2f}",
        f"{c['params'] / 1e6:.2f}M",
        f"{c['madds'] / 1e6:.1f}M",
        "105",
    ]


# ---------------------------------------------------------------------------------------------
# wandb


class FakeWandbRun:
    """What `wandb.Api().runs()` yields, built from a workdir the way MetricWriter logs it."""

    def __init__(self, workdir):
        self.name = os.path.basename(workdir)
        self.id = self.name.replace(".", "-")
        path = os.path.join(workdir, "summary.json")
        summary = json.load(open(path)) if os.path.exists(path) else {}
        records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
        self.state = "finished" if summary.get("complete") else "running"
        # wandb's summary also holds the last logged values and its own underscore keys.
        self.summary = {
            **summary,
            "train/loss": 2.0,
            "_runtime": 12.5,
            "_step": STEPS[-1],
            "_wandb": {"x": 1},
        }
        self.config = {k: summary[k] for k in ("width", "resolution", "expansion", "seed") if k in summary}
        self.config["optim"] = {"lr": 0.045}
        self._records = records
        self.group = None

    def scan_history(self, keys=None, page_size=1000):
        rows: dict[int, dict] = {}
        for record in self._records:  # wandb merges the logs of one step into one row
            row = rows.setdefault(record["step"], {"_step": record["step"], "_runtime": 1.0})
            row.update({k: v for k, v in record.items() if k != "step"})
        return iter(rows.values())


class FakeApi:
    instances: list = []

    def __init__(self, *args, **kwargs):
        self.calls = []
        FakeApi.instances.append(self)

    def runs(self, path=None, filters=None, **kwargs):
        self.calls.append((path, filters))
        return [r for r in self.fake_runs if not filters or r.group == filters.get("group")]


def test_wandb_gives_the_same_records_as_the_workdirs(roots, monkeypatch, capsys):
    import wandb

    grid = roots["grid"]
    fake_runs = [FakeWandbRun(os.path.join(grid, name)) for name in sorted(os.listdir(grid))]
    for run in fake_runs:
        run.group = "width_resolution"
    monkeypatch.setattr(FakeApi, "fake_runs", fake_runs, raising=False)
    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.setattr(records, "_require_online", lambda: None)

    from_wandb = records.load_wandb("me/mnv2_jax-imagenet:width_resolution")
    err = capsys.readouterr().err
    assert FakeApi.instances[-1].calls == [("me/mnv2_jax-imagenet", {"group": "width_resolution"})]
    assert "w0.5_r96_t6_s0" in err and "w0.5_r128_t6_s0" in err  # incomplete there too
    from_files = records.load_runs([grid], log=lambda _: None)
    key = lambda r: r.name  # noqa: E731
    assert sorted(from_wandb, key=key) == sorted(from_files, key=key)
    assert all(r.source.startswith("wandb:me/mnv2_jax-imagenet/") for r in from_wandb)
    assert tables.table_csv(records.aggregate(from_wandb)) == tables.table_csv(records.aggregate(from_files))

    # The command line: --wandb alone, default output directory plots/<entity_project>.
    monkeypatch.chdir(os.path.dirname(grid))
    cli.main(["plot", "fig5", "--wandb", "me/mnv2_jax-imagenet:width_resolution"])
    assert capsys.readouterr().out.split()[0] == os.path.join("plots", "me_mnv2_jax-imagenet", "fig5.png")


def test_wandb_paths():
    assert records.parse_wandb_path("proj") == ("proj", None)
    assert records.parse_wandb_path("ent/proj:grp") == ("ent/proj", "grp")
    assert records.parse_wandb_path("ent/proj/grp") == ("ent/proj", "grp")
    with pytest.raises(records.AnalysisError):
        records.parse_wandb_path("a/b/c/d")


def test_wandb_offline_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(records.AnalysisError, match="offline"):
        records.load_wandb("me/proj")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plot", "fig5", "--wandb", "me/proj"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mnv2 plot: error: --wandb") and "WANDB_MODE=offline" in err[0]
    # No API key: offline too, found without waiting on the network.
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", os.devnull)
    with pytest.raises(records.AnalysisError, match="offline"):
        records.load_wandb("me/proj")


def test_nothing_to_plot_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["plot", "fig5"])
    assert "ROOT" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(records.AnalysisError, match="no complete runs"):
        figures.make("fig5", records.load_runs([str(empty)]), str(tmp_path))
    assert "no run directories" in capsys.readouterr().err


# Roots that do not vary what a figure compares (the smoke sweep's 0.35 and 0.5 at 224, both
# linear, bottleneck residual, t=6; or one run), with the key and sweep file the refusal names.
UNVARIED = {
    "fig5": ([(1.0, 0.70)], "one point", "sweeps/width_resolution.py"),
    "fig6a": (
        [(0.35, 0.60), (0.5, 0.65)],
        "bottleneck_activation ('linear')",
        "sweeps/bottleneck_activation.py",
    ),
    "fig6b": ([(0.35, 0.60), (0.5, 0.65)], "residual ('bottleneck')", "sweeps/residual.py"),
    "expansion": ([(0.35, 0.60), (0.5, 0.65)], "expansion (6.0)", "sweeps/expansion.py"),
}


@pytest.mark.parametrize("kind", sorted(UNVARIED))
def test_a_figure_of_a_root_that_does_not_vary_its_subject_is_refused(tmp_path, kind, capsys):
    runs, lacks, sweep_file = UNVARIED[kind]
    root = str(tmp_path / "root")
    for width, top1 in runs:
        write_run(root, f"w{width:g}_r224_t6_s0", run_summary(width, 224, top1), run_records(top1))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plot", kind, root])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"mnv2 plot: error: {kind}: ")
    assert root in line and lacks in line and sweep_file in line
    assert not os.path.exists(os.path.join(root, "plots"))


def test_nan_values_in_logs_do_not_break_loading(tmp_path):
    lines = run_records(0.6)
    lines.append({"step": 500, "train/loss": "nan", "train/images_per_sec": "nan"})
    write_run(str(tmp_path), "w1_r224_t6_s0", run_summary(1.0, 224, 0.6), lines)
    (run,) = records.load_runs([str(tmp_path / "w1_r224_t6_s0")])
    assert math.isnan(run.images_per_sec[-1])
    assert records.aggregate([run])[0].images_per_sec() == pytest.approx(105.0)


def test_module_is_light_on_import():
    import subprocess
    import sys

    code = "import sys, mnv2_jax.analysis.figures; assert 'matplotlib' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
