"""The benchmark: the smoke preset end to end (seven parts, report, plots, resume) and the baselines it compares with."""

import json
import numbers

import pytest
import torch

from igpg_hf.evaluation.baselines import (
    add_noise,
    average_state_dicts,
    labelled_subset,
    random_init_state_dicts,
    retrieve_by_embedding,
    select_best,
)
from igpg_hf.evaluation.benchmark import PARTS, BenchConfig, run_benchmark
from igpg_hf.zoo import architecture_for_task, get_task, load_task_data
from igpg_hf.zoo.training import HyperParams, train_model

SECTIONS = (
    "## 1. Seen tasks",
    "## 2. Unseen tasks",
    "## 3. Unseen architectures",
    "## 4. Tokenizer fidelity",
    "## 5. Novelty",
    "## 6. Speed and memory",
    "## 7. LoRA adapters",
    "## Headline",
    "Where the generator loses",
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return out, run_benchmark(out, BenchConfig.from_preset("smoke"), progress=False)


def _numbers(obj, path=""):
    """Every leaf of a nested dict/list that should be a figure."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    else:
        yield path, obj


def test_smoke_writes_six_parts_report_and_plots(smoke):
    out, res = smoke
    assert set(PARTS) <= set(res)
    on_disk = json.loads((out / "results.json").read_text())
    assert set(PARTS) <= set(on_disk) and on_disk["seen"] == res["seen"]
    report = (out / "report.md").read_text()
    assert "igpg-hf bench --preset smoke --out DIR" in report
    for section in SECTIONS:
        assert section in report, section
    for png in ("seen", "unseen", "cross_arch", "fidelity", "novelty", "speed", "lora"):
        assert (out / f"{png}.png").stat().st_size > 1000


def test_smoke_figures_are_numbers(smoke):
    _, res = smoke
    assert isinstance(res["seen"]["mean_generated_over_zoo"], float)
    for task, r in res["seen"]["tasks"].items():
        for m in (
            "random_init",
            "zoo",
            "generated",
            "generated_best_of_5",
            "nearest_by_embedding",
            "best_on_500",
            "noise",
            "average",
        ):
            assert all(isinstance(v, numbers.Real) for v in r["methods"][m]["mean"].values()), (task, m)
    for kind in ("independent", "related"):
        for r in res["unseen"]["zoos"][kind]["tasks"].values():
            h = r["head_start"]
            assert all(
                isinstance(h[k], float)
                for k in ("generated", "random_init", "best_retrieval", "gap_to_random_init")
            )
            assert "zoo" not in r["methods"]  # held out: no checkpoints of the task
            # label-aligned rows: the generator against the best retrieval, aligned or not
            a = r["head_start_aligned"]
            assert a["best_retrieval_method"] in (
                "nearest_by_embedding",
                "best_on_500",
                "nearest_by_embedding_aligned",
                "best_on_500_aligned",
            )
            for m in ("generated_aligned", "nearest_by_embedding_aligned", "best_on_500_aligned"):
                assert all(isinstance(v, numbers.Real) for v in r["methods"][m]["mean"].values()), m
            assert len(r["methods"]["generated_aligned"]["alignments"]) == len(
                r["methods"]["generated"]["acc0"]
            )
    assert isinstance(res["unseen"]["all_meet_20_points_aligned"], bool)
    for r in res["cross_arch"]["configs"].values():
        assert isinstance(r["generated"]["recalibrated_mean"], float) and r["parameters"] > 0
    assert all(isinstance(r["reconstructed"], float) for r in res["fidelity"]["rows"])
    assert all(
        isinstance(m["novelty"], float) and isinstance(m["copy"], bool) for m in res["novelty"]["models"]
    )
    sp = res["speed"]
    for path, v in _numbers(
        {
            k: sp[k]
            for k in (
                "generate_1",
                "prior_kv_cache_true",
                "prior_kv_cache_false",
                "train_one_model",
                "tokenizer_by_size",
            )
        }
    ):
        if not path.endswith("architecture"):
            assert isinstance(v, numbers.Real) and v >= 0, path
    lora = res["lora"]["summary"]
    assert isinstance(lora["seen_ratio"], float) and isinstance(lora["mnist_rot45/head_start"], float)
    assert isinstance(lora["mnist_rot45/gap_to_best_retrieval"], float) and lora["generated_samples"] > 0
    assert all(isinstance(v, float) for v in res["timings"].values())


def test_smoke_rerun_reuses_everything(smoke):
    out, res = smoke
    again = run_benchmark(out, BenchConfig.from_preset("smoke"), parts=["seen", "novelty"], progress=False)
    assert again["seen"] == res["seen"] and again["novelty"] == res["novelty"]
    assert again["unseen"] == res["unseen"]  # cached parts with the same config join the report
    assert again["timings"]["total_seconds"] < res["timings"]["total_seconds"]


def test_report_of_some_parts(smoke, tmp_path):
    from igpg_hf.evaluation.report import plot_all, write_report

    _, res = smoke
    some = {k: v for k, v in res.items() if k not in ("unseen", "cross_arch", "speed")}
    text = write_report(some, tmp_path / "report.md").read_text()
    assert "## 1. Seen tasks" in text and "## 5. Novelty" in text and "## 2. Unseen" not in text
    assert sorted(p.name for p in plot_all(some, tmp_path)) == ["fidelity.png", "novelty.png", "seen.png"]


def test_config_presets_and_errors(tmp_path):
    assert BenchConfig.from_preset("gpu").seen.prior_preset == "small"
    assert BenchConfig.from_preset("default").finetune_steps == [10, 25, 50]
    with pytest.raises(ValueError, match="preset 'huge'"):
        BenchConfig.from_preset("huge")
    with pytest.raises(ValueError, match="parts"):
        run_benchmark(tmp_path, BenchConfig.from_preset("smoke"), parts=["sightseeing"])
    with pytest.raises(ValueError, match="pipeline and corpus"):
        run_benchmark(tmp_path, BenchConfig.from_preset("smoke"), pipeline="x")


# ------------------------------------------------------------------------------------------- baselines
def test_noise_at_scale_zero_is_the_checkpoint():
    sd = architecture_for_task("digits", "resnet_small").build().state_dict()
    same = add_noise(sd, 0.0, seed=3)
    assert all(torch.equal(sd[k], same[k]) for k in sd)
    noisy = add_noise(sd, 0.1, seed=3)
    assert not torch.equal(sd["conv1.weight"], noisy["conv1.weight"])
    assert torch.equal(sd["bn1.running_var"], noisy["bn1.running_var"])  # statistics are not parameters
    with pytest.raises(ValueError, match="noise scale"):
        add_noise(sd, -1.0)


def test_average_recalibrates_batchnorm():
    spec = architecture_for_task("digits", "resnet_small")
    sds = random_init_state_dicts(spec, 3)
    plain = average_state_dicts(sds)
    assert torch.equal(plain["bn1.running_var"], torch.ones_like(plain["bn1.running_var"]))
    recal = average_state_dicts(sds, spec, load_task_data("digits").x_train[:256])
    assert not torch.allclose(recal["bn1.running_mean"], plain["bn1.running_mean"])
    assert not torch.allclose(recal["bn1.running_var"], plain["bn1.running_var"])
    assert torch.allclose(recal["conv1.weight"], torch.stack([sd["conv1.weight"] for sd in sds]).mean(0))


def test_retrieval_picks_the_task_with_the_identical_instruction():
    from igpg_hf.conditioning import encode_text, load_text_encoder

    enc, tok = load_text_encoder()
    tasks = ["mnist", "mnist_rot90", "mnist_invert", "digits"]
    emb = encode_text([get_task(t).instruction for t in tasks], enc, tok)
    table = dict(zip(tasks, emb, strict=True))
    for t in tasks:
        assert retrieve_by_embedding(encode_text(get_task(t).instruction, enc, tok)[0], table) == t


def test_best_of_sample_selection_is_the_argmax():
    spec = architecture_for_task("iris")
    trained = train_model(spec, "iris", HyperParams(lr=1e-2, epochs=30), [30])[-1][1]
    sds = [*random_init_state_dicts(spec, 2, seed=5), trained, *random_init_state_dicts(spec, 2, seed=9)]
    x, y = labelled_subset("iris", 50)
    i, accs = select_best(spec, sds, x, y)
    assert i == 2 and accs[i] == max(accs) and len(accs) == 5
    nan = {k: torch.full_like(v, float("nan")) for k, v in trained.items()}
    assert select_best(spec, [nan, sds[0]], x, y)[0] == 1
