"""`mnv2 plot ap|miou|table` on detection and segmentation runs: Table 6 and Table 7 from run folders
written here through `mnv2_jax.workdir` (config.json from the base config, as the training loop
stores it; made-up counts and metrics), AP and mIOU against multiply-adds, and the errors for runs
of mixed tasks or of the wrong task."""

from __future__ import annotations

import csv
import json
import os
import statistics

import pytest

from mnv2_jax import cli
from mnv2_jax import config as config_lib
from mnv2_jax import workdir as workdir_lib
from mnv2_jax.analysis import figures, records, tables
from mnv2_jax.cli import plot as plot_cli

MF = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # DeepLab's multi-scale eval

# Detection points: (head, width, resolution) -> COCO AP per seed (AP50 = AP + 0.2, AP75 = AP - 0.05).
DETECTION_AP = {
    ("ssdlite", 0.5, 320): [0.11],
    ("ssdlite", 1.0, 320): [0.20, 0.22],  # two seeds
    ("ssd", 1.0, 320): [0.23],
    ("ssdlite", 1.0, 256): [0.17],
}
# Segmentation points: (width, output stride, ASPP, eval scales, flip) -> mIOU (raw weights; no EMA).
SEGMENTATION_MIOU = {
    (0.5, 16, False, (1.0,), False): 0.40,
    (1.0, 16, False, (1.0,), False): 0.50,
    (0.5, 8, False, (1.0,), False): 0.45,
    (1.0, 8, False, (1.0,), False): 0.55,
    (1.0, 16, True, (1.0,), False): 0.52,
    (1.0, 8, False, MF, True): 0.58,
}


def synthetic_counts(width: float, resolution: int, extra: int = 0) -> dict[str, int]:
    """Made-up counts that grow with width and resolution (not the networks' real ones)."""
    madds = int(1_000_000 * width * width * resolution * resolution / 1000) + extra
    return {"madds": madds, "params": int(3_000_000 * width) + extra, "params_bn": int(30_000 * width)}


def write_task_run(root: str, name: str, task: str, config_values: dict, summary_values: dict, seed: int = 0):
    """A finished run folder as the training loop leaves it: config.json (the resolved config,
    head settings nested), metrics.jsonl and summary.json."""
    workdir = os.path.join(root, name)
    os.makedirs(workdir)
    config = config_lib.base_config()
    config.task = task
    config.seed = seed
    for key, value in config_values.items():
        section, _, leaf = key.rpartition(".")
        (config[section] if section else config)[leaf] = value
    workdir_lib.write_config(workdir, json.loads(config.to_json()))
    log = workdir_lib.MetricsLog(workdir)
    log.write(100, {"train/loss": 1.0, "train/images_per_sec": 50.0})
    log.close()
    summary = {
        "task": task,
        "width": config.width,
        "resolution": config.resolution,
        "expansion": 6.0,
        "bottleneck_activation": "linear",
        "residual": "bottleneck",
        "dataset": config.dataset,
        "seed": seed,
        "recipe": config.recipe,
        "total_steps": 100,
        **summary_values,
        "step": 100,
        "complete": True,
    }
    workdir_lib.write_summary(workdir, summary)
    return workdir


def make_detection_root(root: str) -> str:
    for (head, width, resolution), aps in DETECTION_AP.items():
        for seed, ap in enumerate(aps):
            extra = 1000 if head == "ssd" else 0  # the regular head costs more
            metrics = {}
            for prefix, shift in (("eval_ema", 0.0), ("eval", -0.01)):
                metrics.update(
                    {
                        f"{prefix}/AP": ap + shift,
                        f"{prefix}/AP50": ap + 0.2 + shift,
                        f"{prefix}/AP75": ap - 0.05 + shift,
                    }
                )
            write_task_run(
                root,
                f"{head}_w{width:g}_r{resolution}_s{seed}",
                "detection",
                {"width": width, "resolution": resolution, "dataset": "coco/2017", "detection.head": head},
                {**synthetic_counts(width, resolution, extra), **metrics},
                seed=seed,
            )
    return root


def make_segmentation_root(root: str) -> str:
    for (width, stride, aspp, scales, flip), miou in SEGMENTATION_MIOU.items():
        extra = 2000 if aspp else 500 if stride == 8 else 0
        name = f"w{width:g}_os{stride}" + ("_aspp" if aspp else "") + ("_mf_flip" if flip else "")
        write_task_run(
            root,
            name,
            "segmentation",
            {
                "width": width,
                "resolution": 513,
                "dataset": "voc2012_seg_aug",
                "output_stride": stride,
                "segmentation.aspp": aspp,
                "segmentation.eval_scales": scales,
                "segmentation.eval_flip": flip,
            },
            {**synthetic_counts(width, 513, extra), "eval/miou": miou, "eval/pixel_acc": 0.9},
        )
    return root


@pytest.fixture
def detection_root(tmp_path):
    return make_detection_root(str(tmp_path / "detection"))


@pytest.fixture
def segmentation_root(tmp_path):
    return make_segmentation_root(str(tmp_path / "segmentation"))


def read_csv(path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def markdown_rows(path) -> dict[str, list[str]]:
    """The Markdown table's header (key 'header') and rows by their first cell."""
    lines = [line for line in open(path).read().splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {"header": cells[0], **{row[0]: row for row in cells[1:]}}


def curve_of(ax, label: str):
    """The data line of the curve labelled `label` (an errorbar container's first line)."""
    (container,) = [c for c in ax.containers if c.get_label() == label]
    return container.lines[0]


def test_records_read_the_head_settings_from_the_nested_config_and_flat_wandb_keys(detection_root):
    (run,) = [r for r in records.load_runs([detection_root]) if r.name == "ssd_w1_r320_s0"]
    assert run.config["task"] == "detection" and run.config["head"] == "ssd"
    assert run.config["aspp"] is None and run.config["eval_scales"] is None  # segmentation's keys
    summary = {"task": "segmentation", "complete": True}
    flat = records.run_from_records(
        "r", summary, {"segmentation.aspp": True, "segmentation.eval_scales": [0.5, 1]}, [], "wandb"
    )
    nested = records.run_from_records(
        "r", summary, {"segmentation": {"aspp": True, "eval_scales": [0.5, 1]}}, [], "wandb"
    )
    assert flat.config == nested.config
    assert (flat.config["aspp"], flat.config["eval_scales"], flat.config["head"]) == (True, (0.5, 1.0), None)
    # A run whose summary and config name no task is a classification run.
    assert records.run_from_records("old", {"complete": True}, {}, [], "x").config["task"] == "classification"


def test_table_of_detection_runs_is_table_6(detection_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    cli.main(["plot", "table", detection_root, "--out", out])
    assert capsys.readouterr().out.split() == [os.path.join(out, "table.md"), os.path.join(out, "table.csv")]
    rows = read_csv(os.path.join(out, "table.csv"))
    assert list(rows[0]) == list(tables.task_table_columns("detection"))
    assert {"ap", "ap50", "ap75", "head", "params", "madds"} <= set(rows[0])
    # One row per point, by multiply-adds; the two seeds of ssdlite 1.0/320 are one row.
    assert [(r["head"], float(r["width"]), int(r["resolution"])) for r in rows] == [
        ("ssdlite", 0.5, 320),
        ("ssdlite", 1.0, 256),
        ("ssdlite", 1.0, 320),
        ("ssd", 1.0, 320),
    ]
    for row in rows:
        aps = DETECTION_AP[(row["head"], float(row["width"]), int(row["resolution"]))]
        assert row["weights"] == "eval_ema" and int(row["seeds"]) == len(aps)
        assert float(row["ap"]) == pytest.approx(statistics.fmean(aps))
        assert float(row["ap50"]) == pytest.approx(statistics.fmean(aps) + 0.2)
        assert float(row["ap75"]) == pytest.approx(statistics.fmean(aps) - 0.05)
        assert float(row["ap_std"]) == pytest.approx(statistics.stdev(aps) if len(aps) > 1 else 0.0)
        extra = 1000 if row["head"] == "ssd" else 0
        expected = synthetic_counts(float(row["width"]), int(row["resolution"]), extra)
        assert (int(row["madds"]), int(row["params"])) == (expected["madds"], expected["params"])

    md = markdown_rows(os.path.join(out, "table.md"))
    assert md["header"] == [
        "Network",
        "head",
        "width",
        "res",
        "seeds",
        "AP EMA (%)",
        "AP50 (%)",
        "AP75 (%)",
        "Params",
        "MAdds",
    ]
    counts = synthetic_counts(1.0, 320)
    mean, std = 21.0, 100 * statistics.stdev([0.20, 0.22])
    assert md["ssdlite_w1_r320"] == [
        "ssdlite_w1_r320",
        "SSDLite",
        "1",
        "320",
        "2",
        f"{mean:.2f} ± {std:.2f}",
        f"{mean + 20:.2f} ± {std:.2f}",
        f"{mean - 5:.2f} ± {std:.2f}",
        f"{counts['params'] / 1e6:.2f}M",
        f"{counts['madds'] / 1e6:.1f}M",
    ]
    assert md["ssd_w1_r320"][1:6] == ["SSD", "1", "320", "1", "23.00"]

    # --metric eval/... tabulates the raw weights.
    cli.main(["plot", "table", detection_root, "--out", out, "--metric", "eval/AP"])
    raw = {r["name"]: r for r in read_csv(os.path.join(out, "table.csv"))}
    assert raw["ssd_w1_r320"]["weights"] == "eval" and float(raw["ssd_w1_r320"]["ap"]) == pytest.approx(0.22)
    assert markdown_rows(os.path.join(out, "table.md"))["header"][5] == "AP raw (%)"


def test_table_of_segmentation_runs_is_table_7(segmentation_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    cli.main(["plot", "table", segmentation_root, "--out", out])
    assert "no run has eval_ema/miou (EMA off?): using eval/miou" in capsys.readouterr().err
    rows = read_csv(os.path.join(out, "table.csv"))
    assert list(rows[0]) == list(tables.task_table_columns("segmentation"))
    assert len(rows) == len(SEGMENTATION_MIOU)
    for row in rows:
        key = (
            float(row["width"]),
            int(row["output_stride"]),
            row["aspp"] == "True",
            tuple(float(s) for s in row["eval_scales"].split("-")),
            row["eval_flip"] == "True",
        )
        assert float(row["miou"]) == pytest.approx(SEGMENTATION_MIOU[key])
        assert row["weights"] == "eval" and row["seeds"] == "1" and row["resolution"] == "513"

    md = markdown_rows(os.path.join(out, "table.md"))
    assert md["header"] == [
        "Network",
        "width",
        "res",
        "OS",
        "ASPP",
        "MF",
        "flip",
        "seeds",
        "mIOU raw (%)",
        "Params",
        "MAdds",
    ]
    aspp = synthetic_counts(1.0, 513, 2000)
    assert md["w1_os16_aspp"] == [
        "w1_os16_aspp",
        "1",
        "513",
        "16",
        "yes",
        "no",
        "no",
        "1",
        "52.00",
        f"{(aspp['params'] + aspp['params_bn']) / 1e6:.2f}M",  # with batch norm, as Table 7 counts
        f"{aspp['madds'] / 1e6:.1f}M",
    ]
    assert md["w1_os8_mf_flip"][3:9] == ["8", "no", "0.5/0.75/1/1.25/1.5/1.75", "yes", "1", "58.00"]
    assert "Table 7 for these runs" in open(os.path.join(out, "table.md")).read()


def test_ap_against_multiply_adds_one_curve_per_head_and_resolution(detection_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    cli.main(["plot", "ap", detection_root, "--out", out])
    assert capsys.readouterr().out.split() == [os.path.join(out, "ap.png"), os.path.join(out, "ap.svg")]
    with open(os.path.join(out, "ap.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    points = records.aggregate(records.load_runs([detection_root]))
    fig = figures.plot_task(points, "detection")
    by_width, by_resolution = fig.axes[:2]  # the runs sweep both: two panels
    assert by_width.get_ylabel() == "COCO AP, % (EMA weights)" and by_width.get_xscale() == "log"
    legend = [t.get_text() for t in by_width.get_legend().get_texts()]
    assert sorted(legend) == ["SSD, 320px", "SSDLite, 256px", "SSDLite, 320px"]
    curve = curve_of(by_width, "SSDLite, 320px")
    expected = [synthetic_counts(w, 320)["madds"] / 1e6 for w in (0.5, 1.0)]
    assert list(curve.get_xdata()) == pytest.approx(expected)
    assert list(curve.get_ydata()) == pytest.approx([11.0, 21.0])
    assert sorted(t.get_text() for t in by_width.texts) == ["×0.5", "×1", "×1", "×1"]
    assert sorted(t.get_text() for t in by_resolution.get_legend().get_texts()) == [
        "SSD, width 1",
        "SSDLite, width 0.5",
        "SSDLite, width 1",
    ]
    assert sorted(t.get_text() for t in by_resolution.texts) == ["256", "320", "320", "320"]
    assert "COCO AP vs multiply-adds" in fig._suptitle.get_text()
    # Another metric of the evaluator: the label says which.
    assert (
        figures.plot_task(points, "detection", "eval/AP50").axes[0].get_ylabel()
        == "COCO AP50, % (raw weights)"
    )


def test_miou_against_multiply_adds_one_curve_per_output_stride_aspp_and_eval(
    segmentation_root, tmp_path, capsys
):
    out = str(tmp_path / "out")
    cli.main(["plot", "miou", segmentation_root, "--out", out])
    assert capsys.readouterr().out.split() == [os.path.join(out, "miou.png"), os.path.join(out, "miou.svg")]
    assert "mIOU" in open(os.path.join(out, "miou.svg")).read()
    points = records.aggregate(records.load_runs([segmentation_root]))
    fig = figures.plot_task(points, "segmentation", "eval/miou")
    (ax,) = fig.axes  # one resolution: one panel, the width along each curve
    assert ax.get_ylabel() == "mIOU, % (raw weights)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == sorted(
        [
            "OS16, no ASPP, single scale, no flip",
            "OS8, no ASPP, single scale, no flip",
            "OS16, ASPP, single scale, no flip",
            "OS8, no ASPP, MF 0.5/0.75/1/1.25/1.5/1.75, flip",
        ]
    )
    curve = curve_of(ax, "OS8, no ASPP, single scale, no flip")
    assert list(curve.get_ydata()) == pytest.approx([45.0, 55.0])
    assert list(curve.get_xdata()) == pytest.approx(
        [synthetic_counts(w, 513, 500)["madds"] / 1e6 for w in (0.5, 1.0)]
    )
    assert "multiply-adds of one pass" in fig._suptitle.get_text()


def test_runs_of_several_tasks_in_one_call_are_refused(detection_root, segmentation_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plot", "table", detection_root, segmentation_root])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert line == (
        "mnv2 plot: error: table: the runs are of several tasks: detection (5 runs), segmentation (6 runs); "
        "give the roots of one task at a time"
    )


@pytest.mark.parametrize(
    ("kind", "root", "message"),
    [
        (
            "fig5",
            "detection",
            "fig5 draws classification runs, but {root} holds detection runs: for those, use `mnv2 plot ap`",
        ),
        (
            "ap",
            "segmentation",
            "ap draws detection runs, but {root} holds segmentation runs: for those, use `mnv2 plot miou`",
        ),
        ("miou", "detection", "miou draws segmentation runs, but {root} holds detection runs"),
    ],
)
def test_a_kind_given_another_tasks_runs_names_the_kind_to_use(tmp_path, kind, root, message, capsys):
    path = (make_detection_root if root == "detection" else make_segmentation_root)(str(tmp_path / root))
    with pytest.raises(SystemExit):
        cli.main(["plot", kind, path])
    assert message.format(root=path) in capsys.readouterr().err


def test_bad_input_for_task_runs_is_refused_naming_the_argument(detection_root, segmentation_root, tmp_path):
    with pytest.raises(
        records.AnalysisError, match="--reference paper: published ImageNet top-1, not for detection runs"
    ):
        figures.make("table", records.load_runs([detection_root]), str(tmp_path), reference="paper")
    one = os.path.join(detection_root, "ssd_w1_r320_s0")
    with pytest.raises(records.AnalysisError, match="ap: .* holds one point .* sweeps/detection.py"):
        figures.make("ap", records.load_runs([one]), str(tmp_path), source=one)
    runs = records.load_runs([segmentation_root])
    with pytest.raises(records.AnalysisError) as error:
        figures.make("miou", runs, str(tmp_path), metric="eval/AP")
    assert str(error.value) == "--metric eval/AP: no run has it; the runs have eval/miou, eval/pixel_acc"
    for run in runs:
        run.config["task"] = "captioning"
    with pytest.raises(
        records.AnalysisError, match="task 'captioning': no plots for it; known tasks: classification"
    ):
        figures.make("table", runs, str(tmp_path))


def test_the_command_line_offers_the_analysis_kinds():
    assert plot_cli.KINDS == records.KINDS
    assert set(records.KIND_TASKS) | {"table"} == set(records.KINDS)
