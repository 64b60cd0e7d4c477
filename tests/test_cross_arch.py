"""The cross-architecture zoo and experiment: a grid of depths built reproducibly, held-out depths classed, ratios."""

import pytest

from igpg_hf.evaluation.experiments.cross_arch import CrossArchConfig, CrossArchResult, classify
from igpg_hf.training.zoo_builder import ZooConfig, build_zoo, plan_runs


def test_the_preset_grid_holds_out_the_experiments_depths():
    zc = ZooConfig.from_preset("resnet_depths")
    grid = zc.arch_grid["blocks"]
    held = CrossArchConfig().held_out
    assert len(grid) == 24 and not [b for b in held if b in grid]
    assert len(plan_runs(zc)) * len(zc.keep_epochs) >= 250  # several hundred checkpoints
    kinds = {str(b): classify(b, grid) for b in held}
    assert kinds == {
        "[3, 3, 3]": "interior",
        "[2, 4, 3]": "interior",
        "[4, 3, 2]": "interior",
        "[1, 1, 1]": "shallower",
        "[2, 1, 2]": "shallower",
        "[5, 5, 5]": "deeper",
        "[4, 5, 4]": "deeper",
    }
    with pytest.raises(ValueError, match="unknown ablation"):
        CrossArchConfig(ablations=["rope"])


def test_the_lineage_preset_descends_from_one_base_at_a_trained_depth():
    zc = ZooConfig.from_preset("resnet_lineage")
    runs = plan_runs(zc)
    held = CrossArchConfig().held_out
    assert zc.arch_grid == ZooConfig.from_preset("resnet_depths").arch_grid
    assert runs[0].role == "base" and runs[0].spec.params["blocks"] == [2, 2, 2]
    assert all(r.role == "finetune" and r.base_run_id == runs[0].run_id for r in runs[1:])
    assert not [r for r in runs if r.spec.params["blocks"] in held]
    assert (len(runs) - 1) * len(runs[1].keep_epochs) >= 250


def _lineage(**changes):
    fields = dict(
        name="lineage",
        tasks=["digits"],
        architectures={"digits": "resnet_small"},
        zoo_kind="finetuned",
        arch_grid={"blocks": [[1, 1, 1], [1, 2, 1]]},
        seeds=[0, 1],
        epochs=2,
        keep_epochs=[2],
        finetune_epochs=1,
    )
    return ZooConfig(**{**fields, **changes})


def test_alignment_is_the_identity_on_a_lineage_and_not_on_independent_runs(tmp_path):
    """What lets the unaligned ablation reuse the pipeline: `_alignment_changes` counts checkpoints alignment moves."""
    from igpg_hf.evaluation.experiments.cross_arch import _alignment_changes

    lineage = list(build_zoo(_lineage(), tmp_path / "l", num_workers=1, progress=False))
    assert len(lineage) == 5 and _alignment_changes(lineage) == 0
    independent = list(
        build_zoo(_lineage(zoo_kind="independent"), tmp_path / "i", num_workers=1, progress=False)
    )
    assert _alignment_changes(independent) > 0


@pytest.mark.slow
def test_a_lineage_zoo_rebuilds_to_the_same_ids_and_weights(tmp_path):
    a = {
        c.metadata.model_id: c.weights
        for c in build_zoo(_lineage(), tmp_path / "a", num_workers=1, progress=False)
    }
    b = {
        c.metadata.model_id: c.weights
        for c in build_zoo(_lineage(), tmp_path / "b", num_workers=2, progress=False)
    }
    assert len(a) == 5 and a == b


@pytest.mark.slow
def test_a_grid_zoo_rebuilds_to_the_same_ids_and_weights(tmp_path):
    cfg = ZooConfig(
        name="grid",
        tasks=["digits"],
        architectures={"digits": "resnet_small"},
        arch_grid={"blocks": [[1, 1, 1], [2, 1, 1]]},
        seeds=[0],
        epochs=1,
        keep_epochs=[0, 1],
    )
    a = {
        c.metadata.model_id: c.weights for c in build_zoo(cfg, tmp_path / "a", num_workers=1, progress=False)
    }
    b = {
        c.metadata.model_id: c.weights for c in build_zoo(cfg, tmp_path / "b", num_workers=2, progress=False)
    }
    assert len(a) == 4 and a == b


def _row(kind, trained, generated, transplant):
    method = lambda v: {"recalibrated_mean": v, "recalibrated_best": v, "finetuned_mean": v}  # noqa: E731
    return {
        "blocks": [1, 1, 1],
        "kind": kind,
        "methods": {
            "trained": method(trained),
            "generated": method(generated),
            "transplant": method(transplant),
        },
    }


def test_summary_ratios_and_targets():
    rows = {
        "a": _row("trained", 90.0, 85.5, 80.0),
        "b": _row("trained", 90.0, 81.0, 80.0),
        "c": _row("interior", 80.0, 40.0, 60.0),
        "d": _row("exterior", 100.0, 50.0, 90.0),
    }
    r = CrossArchResult("digits", [[1, 1, 1]], {}, {"finetune_steps": 22}, rows, {})
    s = r.summary()
    assert s["in_distribution_ratio"] == pytest.approx(83.25 / 90) and s["in_distribution_target_met"]
    assert s["held_out_interior_ratio"] == pytest.approx(0.5) and not s["held_out_interior_target_met"]
    assert s["held_out_exterior_ratio"] == pytest.approx(0.5) and s["held_out_exterior_target_met"]
    assert s["transplant_held_out_exterior_ratio"] == pytest.approx(0.9)
