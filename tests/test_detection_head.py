"""The SSDLite detection head (`mnv2_jax.tasks.detection`): anchors, box coder, matcher, loss,
post-processing against a NumPy reference, and the parameter / multiply-add accounting against the
paper's Tables 5-6 and the Flax variables."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables
from flax.traverse_util import flatten_dict

from mnv2_jax import cli, spec
from mnv2_jax.tasks.detection import anchors, box_coder, counts, loss, postprocess, targets
from mnv2_jax.tasks.detection.head import SSDLite

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------- anchors
def test_anchor_layout_at_320_and_300():
    assert anchors.feature_map_sizes(320) == (20, 10, 5, 3, 2, 1)
    assert anchors.feature_map_sizes(300) == (19, 10, 5, 3, 2, 1)
    assert anchors.anchors_per_location() == (3, 6, 6, 6, 6, 6)
    a320, a300 = anchors.ssd_anchors(320), anchors.ssd_anchors(300)
    assert a320.shape == (2034, 4) and anchors.num_anchors(320) == 2034
    assert a300.shape == (1917, 4) and anchors.num_anchors(300) == 1917
    # Golden values (HEADS.md 8.2, from TF's generator): first anchor (0.1, 1) at the first cell,
    # last anchor sqrt(0.95 * 1.0) at ratio 1 on the 1x1 map, neither clipped.
    np.testing.assert_allclose(a320[0], [-0.025, -0.025, 0.075, 0.075], atol=1e-6)
    np.testing.assert_allclose(a320[-1], [0.01266, 0.01266, 0.98734, 0.98734], atol=1e-5)
    np.testing.assert_allclose(a300[0], [-0.02368, -0.02368, 0.07632, 0.07632], atol=1e-5)
    # Second anchor: (0.2, ratio 2) -> 0.2/sqrt(2) high, 0.2*sqrt(2) wide, same centre.
    h, w = 0.2 / np.sqrt(2), 0.2 * np.sqrt(2)
    np.testing.assert_allclose(
        a320[1], [0.025 - h / 2, 0.025 - w / 2, 0.025 + h / 2, 0.025 + w / 2], atol=1e-6
    )
    # Order: anchor fastest, then x: anchor 3 is the first anchor of cell (0, 1).
    np.testing.assert_allclose(a320[3], [-0.025, 0.025, 0.075, 0.125], atol=1e-6)
    # The second map starts after 20 * 20 * 3 anchors, with scale 0.35 at centre 0.05.
    np.testing.assert_allclose(
        a320[1200], [0.05 - 0.175, 0.05 - 0.175, 0.05 + 0.175, 0.05 + 0.175], atol=1e-6
    )


def test_resolution_too_small_for_six_maps_names_the_key():
    with pytest.raises(ValueError, match="resolution.*>= 33"):
        anchors.feature_map_sizes(32)


# --------------------------------------------------------------------------------------- box coder
def test_box_coder_round_trip_and_known_codes():
    rng = np.random.default_rng(0)
    a = anchors.ssd_anchors(128)
    centre = rng.uniform(0.1, 0.9, (len(a), 2))
    size = rng.uniform(0.05, 0.8, (len(a), 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
    codes = box_coder.encode(boxes, a)
    np.testing.assert_allclose(box_coder.decode(codes, a), boxes, atol=1e-5)
    jax_codes = box_coder.encode(jnp.asarray(boxes), jnp.asarray(a))
    np.testing.assert_allclose(np.asarray(box_coder.decode(jax_codes, jnp.asarray(a))), boxes, atol=1e-5)
    # A box shifted down by a tenth of its anchor's height and twice as wide: (1, 0, 0, 5 log 2).
    anchor = np.array([[0.2, 0.2, 0.4, 0.6]])
    box = np.array([[0.22, 0.0, 0.42, 0.8]])
    np.testing.assert_allclose(box_coder.encode(box, anchor)[0], [1.0, 0.0, 0.0, 5 * np.log(2)], atol=1e-5)


# ----------------------------------------------------------------------------------------- matcher
def test_matcher_threshold_forced_match_and_padding():
    anchor_boxes = jnp.array(
        [
            [0.0, 0.0, 0.5, 0.5],  # IoU 0.5 exactly with box 0 -> positive (>= 0.5)
            [0.0, 0.0, 0.5, 0.49],  # IoU just under 0.5 with box 0 -> negative
            [0.6, 0.6, 0.7, 0.7],  # best anchor of box 1 although IoU < 0.5 -> forced
            [0.9, 0.9, 1.0, 1.0],  # nothing near -> negative
            [0.0, 0.0, 0.5, 1.0],  # IoU 1 with box 0
        ]
    )
    gt = jnp.array([[0.0, 0.0, 0.5, 1.0], [0.6, 0.6, 0.9, 0.9], [0.9, 0.9, 1.0, 1.0]])
    valid = jnp.array([True, True, False])  # the third box is padding: it must match nothing
    sim = targets.iou(gt, anchor_boxes)
    np.testing.assert_allclose(sim[0, 0], 0.5, atol=1e-6)
    assert float(sim[0, 1]) < 0.5
    matches = targets.match(sim, valid)
    assert matches.tolist() == [0, -1, 1, -1, 0]
    codes, slots, positive = targets.assign(gt, jnp.array([4, 7, 2]), valid, anchor_boxes)
    assert positive.tolist() == [True, False, True, False, True]
    assert slots.tolist() == [5, 0, 8, 0, 5]  # label + 1; background 0
    np.testing.assert_allclose(codes[4], 0.0, atol=1e-5)  # the box is its anchor
    np.testing.assert_allclose(box_coder.decode(codes[2], anchor_boxes[2]), gt[1], atol=1e-5)


def test_two_boxes_with_the_same_best_anchor():
    anchor_boxes = jnp.array([[0.0, 0.0, 1.0, 1.0], [0.9, 0.9, 1.0, 1.0]])
    gt = jnp.array([[0.0, 0.0, 0.3, 0.3], [0.5, 0.5, 0.8, 0.8]])  # both best overlap anchor 0 (< 0.5)
    matches = targets.match(targets.iou(gt, anchor_boxes), jnp.array([True, True]))
    assert matches.tolist() == [0, -1]  # the first box wins the shared anchor, as TF's argmax


# -------------------------------------------------------------------------------------------- loss
def test_hard_negative_mining_keeps_three_negatives_per_positive():
    cls_loss = jnp.array(
        [
            [5.0, 0.1, 4.0, 3.0, 2.0, 1.0, 0.5, 6.0, 0.2, 0.3],
            [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    positive = jnp.zeros((2, 10), bool).at[0, 0].set(True).at[0, 7].set(True)
    kept = loss.mine_hard_examples(cls_loss, positive, loss.LossSettings())
    # Image 0: 2 positives -> the 6 hardest of its 8 negatives (not 0.1 and 0.2).
    assert kept[0].tolist() == [True, False, True, True, True, True, True, True, False, True]
    # Image 1: no positive -> min_negatives = 3, the 3 hardest.
    assert kept[1].tolist() == [True, True, True] + [False] * 7
    # Only the 3 highest losses are eligible at all: both positives and the negative 4.0.
    capped = loss.mine_hard_examples(cls_loss, positive, loss.LossSettings(num_hard_examples=3))
    assert capped[0].tolist() == [True, False, True, False, False, False, False, True, False, False]


def test_loss_is_normalised_by_the_positives_of_the_batch():
    anchor_boxes = jnp.array(
        [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0], [0.5, 0.0, 1.0, 0.5]]
    )
    batch = {
        "boxes": jnp.array([[[0.0, 0.0, 0.5, 0.5]], [[0.5, 0.5, 1.0, 1.0]]]),
        "labels": jnp.array([[1], [0]]),
        "box_mask": jnp.array([[1.0], [1.0]]),
    }
    logits = jnp.zeros((2, 4, 3))  # sigmoid 0.5 everywhere: log 2 per column
    codes = jnp.zeros((2, 4, 4)).at[0, 0].set(jnp.array([0.5, 0.0, 2.0, 0.0]))
    value, metrics = loss.detection_loss(
        {"box_encodings": codes, "class_logits": logits}, batch, anchor_boxes
    )
    # 2 positives; each image keeps its positive and all 3 negatives (min_negatives): 8 anchors x 3 columns.
    np.testing.assert_allclose(metrics["cls_loss"], 8 * 3 * np.log(2) / 2, rtol=1e-6)
    # Huber: 0.5 * 0.5^2 + (2 - 0.5) on the one positive with non-zero codes.
    np.testing.assert_allclose(metrics["box_loss"], (0.125 + 1.5) / 2, rtol=1e-6)
    np.testing.assert_allclose(value, metrics["cls_loss"] + metrics["box_loss"], rtol=1e-6)
    assert float(metrics["positives"]) == 1.0


# ---------------------------------------------------------------------------------- post-processing
def _random_predictions(rng, batch, n, classes):
    centre = rng.uniform(0.0, 1.0, (batch, n, 2))
    # Few distinct sizes and centres on a coarse grid: many overlapping boxes, near-ties in IoU.
    centre = np.round(centre * 6) / 6
    size = rng.choice([0.1, 0.2, 0.3, 0.5], (batch, n, 2))
    boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], -1), 0, 1).astype(np.float32)
    scores = rng.uniform(0, 1, (batch, n, classes)).astype(np.float32)
    scores[scores < 0.3] = 0.0  # below the score threshold
    return boxes, scores


@pytest.mark.parametrize("max_per_class,max_detections", [(100, 100), (5, 12)])
def test_batched_nms_matches_the_numpy_reference(max_per_class, max_detections):
    rng = np.random.default_rng(0)
    boxes, scores = _random_predictions(rng, 3, 150, 4)
    settings = postprocess.NMSSettings(max_per_class=max_per_class, max_detections=max_detections)
    out = jax.jit(lambda b, s: postprocess.batched_nms(b, s, settings))(boxes, scores)
    reference = postprocess.nms_reference(boxes, scores, settings)
    for i, expected in enumerate(reference):
        n = int(out["num_detections"][i])
        assert n == len(expected) > 0
        np.testing.assert_allclose(out["scores"][i, :n], [e[0] for e in expected], rtol=1e-6)
        assert out["classes"][i, :n].tolist() == [e[1] for e in expected]
        np.testing.assert_allclose(out["boxes"][i, :n], boxes[i, [e[2] for e in expected]])
        assert np.all(np.asarray(out["scores"][i, n:]) == 0)
        assert out["boxes"].shape == (3, max_detections, 4)


def test_nms_suppresses_overlaps_above_0_6_only():
    boxes = np.array([[[0, 0, 1, 1], [0, 0, 1, 0.65], [0, 0, 1, 0.55], [0.5, 0.5, 0.6, 0.6]]], np.float32)
    scores = np.array([[[0.9], [0.8], [0.7], [0.0]]], np.float32)
    out = postprocess.batched_nms(jnp.asarray(boxes), jnp.asarray(scores))
    # IoU 0.65 > 0.6 is suppressed, IoU 0.55 kept, score 0 is below the threshold.
    assert int(out["num_detections"][0]) == 2
    np.testing.assert_allclose(out["scores"][0, :2], [0.9, 0.7])


def test_detect_decodes_and_drops_the_background_column():
    a = jnp.asarray(anchors.ssd_anchors(64))
    logits = jnp.full((1, len(a), 3), -10.0).at[0, 5, 2].set(3.0).at[0, 5, 0].set(9.0)
    out = postprocess.detect(jnp.zeros((1, len(a), 4)), logits, a)
    assert int(out["classes"][0, 0]) == 1  # slot 2 is foreground class 1; background ignored
    np.testing.assert_allclose(out["scores"][0, 0], jax.nn.sigmoid(3.0), rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][0, 0], np.clip(a[5], 0, 1), atol=1e-6)


# --------------------------------------------------------------------------------------- accounting
def _variable_counts(model, resolution):
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, resolution, resolution, 3)))
    )
    flat = flatten_dict(shapes["params"])
    params = sum(int(np.prod(v.shape)) for k, v in flat.items() if k[-2] != "bn")
    bn = sum(int(np.prod(v.shape)) for k, v in flat.items() if k[-2] == "bn")
    head = sum(
        int(np.prod(v.shape))
        for k, v in flat.items()
        if k[-2] != "bn" and k[0].startswith(("extra_", "box_", "class_"))
    )
    return params, bn, head, shapes


def test_paper_numbers_from_the_accounting():
    arch = spec.build_architecture(width=1.0, num_classes=0)
    whole, head = counts.count(arch, 320, 80)
    assert (whole.params, whole.madds) == (4_286_261, 788_830_144)  # Table 6: 4.3M, 0.8B
    assert (head.params, head.madds, head.params_bn) == (2_096_501, 177_617_344, 16_640)  # Table 5: 2.1M
    whole_ssd, head_ssd = counts.count(arch, 320, 80, "ssd")
    assert (head_ssd.params, head_ssd.madds) == (14_773_173, 1_259_068_672)  # Table 5: 14.8M, 1.25B
    assert round(whole.params / 1e6, 1) == 4.3 and round(whole.madds / 1e9, 1) == 0.8
    whole_300, _ = counts.count(arch, 300, 80)
    assert whole_300.madds == 734_610_416 and whole_300.params == whole.params


@pytest.mark.parametrize("head_type", ["ssdlite", "ssd"])
def test_flax_variables_have_the_counted_sizes(head_type):
    arch = spec.build_architecture(width=1.0, num_classes=0)
    params, bn, head, shapes = _variable_counts(SSDLite(arch, num_slots=81, head_type=head_type), 320)
    whole, head_counts = counts.count(arch, 320, 80, head_type)
    assert (params, bn, head) == (whole.params, whole.params_bn, head_counts.params)
    outputs = jax.eval_shape(
        SSDLite(arch, num_slots=81, head_type=head_type).apply, shapes, jnp.zeros((2, 320, 320, 3))
    )
    assert outputs["box_encodings"].shape == (2, 2034, 4) and outputs["class_logits"].shape == (2, 2034, 81)


def test_width_and_resolution_are_free():
    arch = spec.build_architecture(width=0.35, max_repeats=1, num_classes=0)
    model = SSDLite(arch, num_slots=11)
    params, bn, head, variables = _variable_counts(model, 96)
    whole, head_counts = counts.count(arch, 96, 10)
    assert (params, bn, head) == (whole.params, whole.params_bn, head_counts.params)
    # TF's depth_fn: int(depth * width) floored at 16, so the extras are (89, 179), (44, 89), (44, 89), (22, 44).
    flat = flatten_dict(variables["params"])
    assert flat[("extra_2", "project", "conv", "kernel")].shape == (1, 1, 89, 179)
    assert flat[("extra_5", "expand", "conv", "kernel")].shape == (1, 1, 89, 22)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3)), jnp.float32)
    out = jax.jit(lambda v, x: model.apply(v, x))(random_variables(model, 96), x)
    assert out["class_logits"].shape == (2, anchors.num_anchors(96), 11)
    assert np.all(np.isfinite(np.asarray(out["class_logits"])))


def test_info_task_detection_json(capsys):
    cli.main(["info", "--task", "detection", "--width", "1.0", "--resolution", "320", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (out["params"], out["madds"], out["num_classes"], out["anchors"]) == (
        4_286_261,
        788_830_144,
        80,
        2034,
    )
    assert (out["head"]["params"], out["head"]["madds"]) == (2_096_501, 177_617_344)
    cli.main(["info", "--task", "detection", "--head", "ssd", "--resolution", "320", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (out["head"]["params"], out["head"]["madds"]) == (14_773_173, 1_259_068_672)
    cli.main(["info", "--task", "detection", "--resolution", "300", "--num-classes", "90"])
    table = capsys.readouterr().out
    assert "class_predictor_5/conv" in table and "head alone" in table


def test_detection_sweep_lists_the_detector_counts():
    from mnv2_jax.sweeps import sweep_file

    listed = {
        r["name"]: r
        for r in sweep_file.list_runs(sweep_file.load_sweep(os.path.join(REPO, "sweeps", "detection.py")))
    }
    assert (listed["w1.0_r320_t6_s0"]["madds"], listed["w1.0_r320_t6_s0"]["params"]) == (
        788_830_144,
        4_286_261,
    )
    assert listed["w1.0_r300_t6_s0"]["madds"] == 734_610_416


def test_class_prior_sets_the_class_biases_and_the_initial_scores():
    arch = spec.build_architecture(width=0.35, max_repeats=1, num_classes=0)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3)), jnp.float32)
    zero = SSDLite(arch, num_slots=11)
    flat = flatten_dict(zero.init(jax.random.PRNGKey(0), x)["params"])
    assert not any(np.any(flat[(f"{kind}_predictor_0", "conv", "bias")]) for kind in ("box", "class"))

    model = SSDLite(arch, num_slots=11, class_prior=0.01)
    variables = model.init(jax.random.PRNGKey(0), x)
    flat = flatten_dict(variables["params"])
    bias = np.asarray(flat[("class_predictor_0", "conv", "bias")]).reshape(3, 11)  # 3 anchors x 11 slots
    np.testing.assert_allclose(bias[:, 0], np.log(0.99 / 0.01), rtol=1e-6)  # background
    np.testing.assert_allclose(bias[:, 1:], np.log(0.01 / 0.99), rtol=1e-6)
    assert not np.any(np.asarray(flat[("box_predictor_0", "conv", "bias")]))
    scores = jax.nn.sigmoid(jax.jit(model.apply)(variables, x)["class_logits"])
    assert 0.005 < float(jnp.mean(scores[..., 1:])) < 0.02 and float(jnp.mean(scores[..., 0])) > 0.98
    with pytest.raises(ValueError, match="detection.class_prior"):
        SSDLite(arch, num_slots=11, class_prior=1.5).init(jax.random.PRNGKey(0), x)
