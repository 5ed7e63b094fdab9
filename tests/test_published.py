"""The published TF-Slim MobileNetV2 table (`mnv2_jax.analysis.published`): all 22 checkpoints, and
each row's multiply-adds and parameters agree with this package's analytic accounting -- an
independent check on both the typed-in table and the accounting."""

from __future__ import annotations

import pytest

from mnv2_jax import accounting, spec
from mnv2_jax.analysis import published


def test_the_table_has_the_22_width_resolution_checkpoints():
    rows = published.TF_SLIM_MOBILENET_V2
    assert len(rows) == 22 == len({(r.width, r.resolution) for r in rows})
    grid = {(w, r) for w in (1.0, 0.75, 0.5, 0.35) for r in (224, 192, 160, 128, 96)}
    assert {(r.width, r.resolution) for r in rows} == grid | {(1.4, 224), (1.3, 224)}
    assert all(0 < r.top1 < r.top5 < 100 for r in rows)


@pytest.mark.parametrize("row", published.TF_SLIM_MOBILENET_V2, ids=lambda r: f"{r.width:g}/{r.resolution}")
def test_published_madds_and_params_match_the_accounting(row):
    counts = accounting.count(spec.build_architecture(width=row.width), row.resolution)
    assert counts.madds // 10**6 == row.madds_millions  # the table rounds down to whole millions
    assert round(counts.params / 1e6, 2) == row.params_millions


def test_lookup_only_matches_imagenet_runs_of_the_published_architecture():
    run = {"dataset": "imagenet2012", "width": 0.75, "resolution": 160, "expansion": 6.0}
    assert published.lookup(run).top1 == 66.4
    assert published.lookup({**run, "dataset": "imagenet2012:5.1.0"}).top1 == 66.4
    assert published.lookup({**run, "resolution": 150}) is None
    assert published.lookup({**run, "dataset": "mnist_offline"}) is None
    assert published.lookup({**run, "expansion": 4.0}) is None
    assert published.lookup({**run, "residual": "none"}) is None
    assert published.lookup({**run, "max_repeats": 1}) is None
    with pytest.raises(ValueError, match="unknown reference 'slim'; choose from paper"):
        published.reference("slim")
