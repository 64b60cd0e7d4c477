"""The benchmark: the smoke preset end to end (seven experiments, report, plots, resume), adding an experiment, and
the baselines it compares with."""

import json
import numbers
from dataclasses import dataclass

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
from igpg_hf.evaluation.benchmark import BenchConfig, run_benchmark
from igpg_hf.evaluation.experiments import EXPERIMENTS, Experiment, ExperimentResult, default_parts
from igpg_hf.zoo import architecture_for_task, get_task, load_task_data
from igpg_hf.zoo.training import HyperParams, train_model

SECTIONS = (
    "## 1. Seen tasks",
    "## 2. Unseen tasks",
    "## 3. Cross-architecture generation",
    "## 4. VQ-VAE fidelity",
    "## 5. Novelty",
    "## 6. Speed and memory",
    "## 7. LoRA adapters",
    "## Headline",
    "Where the generator loses",
)


PARTS = ("seen", "unseen", "cross_arch", "fidelity", "novelty", "speed", "lora")


@pytest.fixture(scope="module")
def smoke(smoke_bench):
    out, res = smoke_bench
    return out, res.results


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


@pytest.mark.slow
def test_smoke_writes_seven_parts_report_and_plots(smoke):
    out, res = smoke
    assert (
        tuple(default_parts()) == PARTS
        and set(PARTS) <= set(res)
        and not set(EXPERIMENTS) - set(PARTS) & set(res)
    )
    assert all(isinstance(res[p]["summary"], dict) and res[p]["summary"] for p in PARTS)
    on_disk = json.loads((out / "results.json").read_text())
    assert set(PARTS) <= set(on_disk) and on_disk["seen"] == res["seen"]
    report = (out / "report.md").read_text()
    assert "igpg-hf bench --preset smoke --out DIR" in report
    for section in SECTIONS:
        assert section in report, section
    for png in ("seen", "unseen", "cross_arch", "fidelity", "novelty", "speed", "lora"):
        assert (out / f"{png}.png").stat().st_size > 1000


@pytest.mark.slow
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
        for m in ("trained", "generated", "transplant", "random_init"):
            assert all(
                isinstance(r["methods"][m][k], float) for k in ("recalibrated_mean", "finetuned_mean")
            ), m
        assert r["parameters"] > 0 and r["kind"] in ("trained", "interior", "exterior")
    s = res["cross_arch"]["summary"]
    for k in ("in_distribution_ratio", "held_out_interior_ratio", "held_out_exterior_ratio"):
        assert isinstance(s[k], float) and isinstance(s["transplant_" + k], float), k
    assert set(res["cross_arch"]["ablations"]) == {"absolute"}
    assert all(isinstance(r["reconstructed"], float) for r in res["fidelity"]["rows"])
    assert all(
        isinstance(m["novelty"], float) and isinstance(m["copy"], bool) for m in res["novelty"]["models"]
    )
    sp = res["speed"]
    for path, v in _numbers(
        {
            **{
                k: sp["calls"][k]
                for k in ("generate_1", "prior_kv_cache_true", "prior_kv_cache_false", "train_one_model")
            },
            "vqvae_by_size": sp["vqvae_by_size"],
        }
    ):
        if not path.endswith("architecture"):
            assert isinstance(v, numbers.Real) and v >= 0, path
    ss = sp[
        "summary"
    ]  # issue 15: the loop against generate() in the same run, and the largest model generated
    for k in ("sampling_speedup_1", "sampling_speedup_5", "cache_speedup_1", "busy_neighbour_slowdown"):
        assert isinstance(ss[k], float) and ss[k] > 0, k
    assert ss["tokens_identical_1"] is True and ss["tokens_identical_5"] is True
    big = max(sp["generation_by_size"], key=lambda r: r["parameters"])
    assert ss["largest_generated_params"] == big["parameters"] > 1000
    assert ss["largest_generated_seconds"] == big["seconds"] > 0 and ss["largest_generated_peak_mb"] >= 0
    lora = res["lora"]["summary"]
    assert isinstance(lora["seen_ratio"], float) and isinstance(lora["mnist_rot45/head_start"], float)
    assert isinstance(lora["mnist_rot45/gap_to_best_retrieval"], float) and lora["generated_samples"] > 0
    assert all(isinstance(v, float) for v in res["timings"].values())


@pytest.mark.slow
def test_smoke_rerun_reuses_everything(smoke):
    out, res = smoke
    again = run_benchmark(
        out, BenchConfig.from_preset("smoke"), parts=["seen", "novelty"], progress=False
    ).results
    assert again["seen"] == res["seen"] and again["novelty"] == res["novelty"]
    assert again["unseen"] == res["unseen"]  # cached parts with the same config join the report
    assert again["timings"]["total_seconds"] < res["timings"]["total_seconds"]


@pytest.mark.slow
def test_report_of_some_parts(smoke, tmp_path):
    from igpg_hf.evaluation.report import plot_all, write_report

    _, res = smoke
    some = {k: v for k, v in res.items() if k not in ("unseen", "cross_arch", "speed")}
    text = write_report(some, tmp_path / "report.md").read_text()
    assert "## 1. Seen tasks" in text and "## 5. Novelty" in text and "## 2. Unseen" not in text
    assert sorted(p.name for p in plot_all(some, tmp_path)) == [
        "fidelity.png",
        "lora.png",
        "novelty.png",
        "seen.png",
    ]


def test_config_presets_and_errors(tmp_path):
    assert BenchConfig.from_preset("gpu").zoos["seen"].recipe.prior_preset == "small"
    assert BenchConfig.from_preset("default").experiments["seen"].finetune.steps == [10, 25, 50]
    smoke = BenchConfig.from_preset("smoke")
    assert smoke.experiments["novelty"].held_out_tasks == smoke.experiments["unseen"].tasks
    with pytest.raises(ValueError, match="preset 'huge'"):
        BenchConfig.from_preset("huge")
    with pytest.raises(ValueError, match="unknown experiment 'sightseeing'"):
        run_benchmark(tmp_path, BenchConfig.from_preset("smoke"), parts=["sightseeing"])
    with pytest.raises(ValueError, match="pipeline and corpus"):
        run_benchmark(tmp_path, BenchConfig.from_preset("smoke"), pipeline="x")


@dataclass
class ToyResult(ExperimentResult):
    tasks: dict[str, float]

    def summary(self):
        return {"mean_zoo_accuracy": sum(self.tasks.values()) / len(self.tasks)}


class Toy(Experiment):
    """An experiment written outside the package: one class, registered with one line."""

    name, title, Result = "toy", "Toy", ToyResult

    def run(self, ctx):
        z = ctx.zoo("seen")
        return ToyResult(
            {t: sum(z.accuracy[c.metadata.model_id] for c in cs) / len(cs) for t, cs in z.by_task.items()}
        )

    def report(self, r):
        return [f"## {self.title}", "", *(f"- {t}: {a:.1f}" for t, a in r.tasks.items()), ""]


@pytest.mark.slow
def test_an_experiment_is_one_class_and_one_registry_line(smoke, monkeypatch):
    """The driver, results.json, the report and `--parts` pick up a registered experiment with no other edit."""
    out, res = smoke
    monkeypatch.setitem(EXPERIMENTS, Toy.name, Toy)
    toy = run_benchmark(out, BenchConfig.from_preset("smoke"), parts=["toy"], progress=False)
    assert (
        set(toy.results["toy"]) == {"summary", "tasks"}
        and toy.results["toy"]["summary"]["mean_zoo_accuracy"] > 0
    )
    assert toy.results["seen"] == res["seen"]  # the other experiments' caches stay valid
    assert "## Toy" in (out / "report.md").read_text()
    assert json.loads((out / "results.json").read_text())["meta"]["parts"] == ["toy"]


@pytest.mark.slow
@pytest.mark.slow
def test_opt_in_experiments_and_config_changes(smoke, tmp_path):
    """quantizers and label_alignment run only when named; `with_changes` sets an experiment's field."""
    out, _ = smoke
    config = BenchConfig.from_preset("smoke").with_changes({"label_alignment.min_z": -100.0})
    res = run_benchmark(out, config, parts=["quantizers", "label_alignment"], progress=False).results
    q, la = res["quantizers"], res["label_alignment"]
    assert set(q["variants"]) == {"gumbel", "fsq"} and q["variants"]["fsq"]["vocab_size"] == 16
    assert la["min_z"] == -100.0 and la["summary"]["aligned_nets"] == 2 * 2 * 2 * 2
    with pytest.raises(ValueError, match="no field 'min_zz'"):
        config.with_changes({"label_alignment.min_zz": 1})
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        config.with_changes({"nope.x": 1})


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


def test_reproduce_command_rebuilds_the_same_config():
    import shlex

    from igpg_hf.cli import _key_values
    from igpg_hf.evaluation.benchmark import reproduce_command

    changes = {
        "instructions.general_corpus": "/data/zoo default",
        "instructions.zoos": ["general"],
        "instructions.canonical_samples": 1,
    }
    cfg = BenchConfig.from_preset("default", workers=1).with_changes(changes)
    words = shlex.split(reproduce_command(cfg, ["instructions"], "DIR"))
    assert words[:6] == ["igpg-hf", "bench", "--preset", "default", "--parts", "instructions"]
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert words[words.index("--workers") + 1] == "1" and words[-2:] == ["--out", "DIR"]
    rebuilt = BenchConfig.from_preset("default", workers=1).with_changes(_key_values(sets, "--set"))
    assert rebuilt == cfg and len(sets) == 3
    # the preset's own run: nothing to add
    plain = reproduce_command(BenchConfig.from_preset("default"), default_parts(), "DIR")
    assert plain == "igpg-hf bench --preset default --out DIR"


def test_instructions_summary_of_a_run_without_the_samples_setting():
    """`instructions.with_samples=false` skips setting (c): its figures are NaN / None and the targets unmet."""
    import math

    from igpg_hf.evaluation.experiments.instructions import _SKIPPED, _summary

    def gen(acc):
        return {"acc": [acc], "ratio": acc / 90.0, "copies": 1, "flagged": False, "nearest_task": "digits"}

    canonical = [{"task": "digits", "family": "mlp", "zoo_mean": 90.0, **gen(90.0), "retrieval": gen(89.0)}]
    wordings = [
        {"task": "digits", "zoo_mean": 90.0, "text": gen(85.0), "data": _SKIPPED, "retrieval": gen(88.0)},
        {"task": "digits", "zoo_mean": 90.0, "text": gen(89.0), "data": _SKIPPED, "retrieval": gen(80.0)},
    ]
    s = _summary(canonical, wordings, [gen(10.0)], [0.9, 0.8], [0.1], 0.5)
    assert math.isnan(s["heldout_data_ratio_pass_rate"]) and s["retrieval_wins_data"] is None
    assert s["retrieval_data_ratio_pass_rate"] is None and s["retrieval_data_wins"] is None
    assert s["heldout_text_ratio_pass_rate"] == 1.0 and s["retrieval_wins_text"] == 1
    assert s["meets_targets"] is False and s["samples"] == 1 + 2 + 1 and s["copies"] == 4
