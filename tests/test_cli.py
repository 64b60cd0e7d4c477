"""The CLI end to end on tiny presets: zoo build, train (both stages, and the whole pipeline), generate,
bench --parts; the output files and what each command prints. Four tests here failed on the CLI before it took
its defaults from the library's configs (marked "was a bug")."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from igpg_hf import IGPGPipeline, IGPGPriorModel, IGPGVQVAEModel, WeightCorpus, get_architecture
from igpg_hf.cli import app
from igpg_hf.corpus import CorpusWriter
from igpg_hf.evaluation.settings import GenerationSettings
from igpg_hf.training.zoo_presets import PRESETS

INSTRUCTION = "Classify iris flowers"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "zoo"
    printed = invoke("zoo", "build", "--preset", "tiny", "--out", out, "--workers", "1")
    return out, printed


@pytest.fixture(scope="module")
def run(zoo, tmp_path_factory):
    """`train vqvae` then `train prior` on the tiny zoo, the pipeline saved beside."""
    out = tmp_path_factory.mktemp("cli") / "run"
    printed = invoke("train", "vqvae", "--corpus", zoo[0], "--out", out, "--preset", "smoke")
    printed += invoke(
        "train",
        "prior",
        "--corpus",
        zoo[0],
        "--out",
        out,
        "--preset",
        "smoke",
        "--pipeline-out",
        out / "pipe",
    )
    return out, printed


def test_zoo_build_prints_what_it_did(zoo):
    """was a bug: every `zoo build` printed "? checkpoints" (it read a stats key the builder never writes)."""
    out, printed = zoo
    n = len(WeightCorpus.load(out))
    assert n == 8 and (out / "build_stats.json").exists()
    assert "? checkpoints" not in printed and f"wrote {n} checkpoints, {n} in the corpus" in printed
    again = invoke("zoo", "build", "--preset", "tiny", "--out", out, "--workers", "1")
    assert "trained 0 of 4 runs, 4 already done; wrote 0 checkpoints, 8 in the corpus" in again


def test_zoo_build_lists_the_presets_of_the_registry():
    """was a bug: `zoo build --help` listed a `finetuned` preset that does not exist."""
    text = invoke("zoo", "build", "--help")
    listed = re.search(r"ZooConfig preset: ([^.]*)\.", text).group(1)
    assert [p.strip() for p in listed.split("|")] == list(PRESETS)
    assert "finetuned" not in listed
    bad = CliRunner().invoke(app, ["zoo", "build", "--preset", "finetuned", "--out", "x"])
    assert bad.exit_code == 2 and "unknown zoo preset 'finetuned'" in bad.output


def test_train_both_stages(run):
    out, printed = run
    for stage in ("vqvae", "prior"):
        assert (out / stage / "final" / "model.safetensors").exists() and (
            out / stage / "recipe.json"
        ).exists()
    assert (
        "VQ-VAE (gumbel) saved to" in printed
        and "prior saved to" in printed
        and "pipeline saved to" in printed
    )
    config = json.loads((out / "prior" / "final" / "config.json").read_text())
    assert config["text_encoder_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert config["support_per_class"] == 5 and config["context_rule"] == "longest"
    assert (out / "pipe" / "model_index.json").exists()


def test_train_vqvae_keeps_the_presets_quantizer(zoo, tmp_path):
    """was a bug: `train tokenizer --preset fsq` trained a Gumbel quantizer (the CLI always passed gumbel)."""
    printed = invoke(
        "train",
        "vqvae",
        "--corpus",
        zoo[0],
        "--out",
        tmp_path,
        "--preset",
        "smoke",
        "--vqvae-preset",
        "fsq",
        "--steps",
        "2",
    )
    assert IGPGVQVAEModel.from_pretrained(tmp_path / "vqvae" / "final").config.quantizer == "fsq"
    assert "VQ-VAE (fsq)" in printed
    again = CliRunner().invoke(
        app,
        [
            "train",
            "vqvae",
            "--corpus",
            str(zoo[0]),
            "--out",
            str(tmp_path),
            "--preset",
            "smoke",
            "--steps",
            "3",
        ],
    )  # the folder holds an fsq VQ-VAE of 2 steps: refused, not silently reused
    assert again.exit_code == 2 and "other settings" in again.output
    typo = CliRunner().invoke(
        app,
        [
            "train",
            "vqvae",
            "--corpus",
            str(zoo[0]),
            "--out",
            str(tmp_path / "t"),
            "--vqvae-config",
            "chunk_sise=3",
        ],
    )
    assert typo.exit_code == 2 and "unknown IGPGVQVAEConfig field(s) ['chunk_sise']" in typo.output


@pytest.mark.slow
def test_training_ignores_the_corpus_order(zoo, run, tmp_path):
    """The same checkpoints stored in reverse order give bit-identical weights (here `train pipeline`, the two
    stages at once, against `train vqvae` + `train prior` on the original order)."""
    reverse = CorpusWriter(tmp_path / "zoo")
    for c in reversed(list(WeightCorpus.load(zoo[0]))):
        reverse.add(c.state_dict(), c.metadata)
    reverse.close()
    ids = lambda p: [c.metadata.model_id for c in WeightCorpus.load(p)]  # noqa: E731
    assert ids(tmp_path / "zoo") == ids(zoo[0])[::-1]
    invoke("train", "pipeline", "--corpus", tmp_path / "zoo", "--out", tmp_path / "run", "--preset", "smoke")
    for stage, cls in (("vqvae", IGPGVQVAEModel), ("prior", IGPGPriorModel)):
        a = cls.from_pretrained(run[0] / stage / "final").state_dict()
        b = cls.from_pretrained(tmp_path / "run" / stage / "final").state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    assert (tmp_path / "run" / "pipeline" / "model_index.json").exists()


def test_train_pipeline_refines_the_decoder_and_reuses_both_stages(zoo, run, tmp_path):
    """`--decoder-steps N` adds a stage that trains the VQ-VAE's decoder alone: the trained VQ-VAE and prior are
    reused (the tokens do not change), and the saved pipeline decodes with the refined decoder."""
    out = tmp_path / "run"
    for stage in ("vqvae", "prior"):
        shutil.copytree(run[0] / stage, out / stage)
    invoke(
        "train", "pipeline", "--corpus", zoo[0], "--out", out, "--preset", "smoke",
        "--decoder-steps", "5", "--decoder-batch-size", "32",
    )  # fmt: skip
    base = IGPGVQVAEModel.from_pretrained(out / "vqvae" / "final").state_dict()
    refined = IGPGVQVAEModel.from_pretrained(out / "vqvae_decoder" / "final").state_dict()
    saved = IGPGPipeline.from_pretrained(out / "pipeline")
    assert all(torch.equal(v, refined[k]) for k, v in saved.vqvae.state_dict().items())
    changed = {k for k in base if not torch.equal(base[k], refined[k])}
    assert changed and all(k.startswith(("decoder.", "dec_pos.")) for k in changed)
    prior = IGPGPriorModel.from_pretrained(run[0] / "prior" / "final").state_dict()
    assert all(torch.equal(v, prior[k]) for k, v in saved.prior.state_dict().items())
    assert (
        json.loads((out / "vqvae_decoder" / "recipe.json").read_text())["vqvae_decoder_training"]["steps"]
        == 5
    )


def test_generate_samples_with_the_library_defaults(run, tmp_path):
    """was a bug: `generate` sampled at temperature 0.8 with no top-p (the setting that breaks nets)."""
    pipe_dir = run[0] / "pipe"
    out = tmp_path / "net.safetensors"
    printed = invoke(
        "generate",
        INSTRUCTION,
        "--pipeline",
        pipe_dir,
        "--architecture",
        "mlp_small",
        "--out",
        out,
        "--num-samples",
        "2",
    )
    defaults = GenerationSettings()
    assert f"temperature {defaults.temperature}, top-k {defaults.top_k}, top-p {defaults.top_p}" in printed
    pipe = IGPGPipeline.from_pretrained(pipe_dir)
    ref = pipe(INSTRUCTION, architecture="mlp_small", num_samples=2, seed=0, temperature=1.0, top_p=0.9)
    for i, path in enumerate([out, tmp_path / "net-1.safetensors"]):
        sd = load_file(path)
        get_architecture("mlp_small").build().load_state_dict(sd, strict=True)
        assert all(torch.equal(sd[k], ref.state_dicts[i][k]) for k in sd)
    invoke(
        "generate",
        INSTRUCTION,
        "--pipeline",
        pipe_dir,
        "--architecture",
        "mlp_small",
        "--out",
        out,
        "--top-p",
        "0.5",
    )
    low = pipe(INSTRUCTION, architecture="mlp_small", seed=0, temperature=1.0, top_p=0.5)
    assert all(torch.equal(load_file(out)[k], low.state_dicts[0][k]) for k in low.state_dicts[0])


def test_generate_selects_candidates_by_accuracy_on_the_dataset_samples(run, tmp_path):
    pipe_dir, out = run[0] / "pipe", tmp_path / "net.safetensors"
    arch = '{"family": "mlp", "in_features": 4, "hidden": [16], "num_classes": 3, "activation": "relu"}'
    args = ["--pipeline", pipe_dir, "--architecture", arch, "--out", out, "--dataset", "iris"]
    printed = invoke(
        "generate", "Sort iris plants by species", *args, "--select-by", "support_accuracy", "--candidates", "2",
        "--match-known-task", "--guidance-scale", "1.5",
    )  # fmt: skip
    pipe = IGPGPipeline.from_pretrained(pipe_dir)
    ref = pipe(
        "Sort iris plants by species", architecture=json.loads(arch), dataset="iris", seed=0, top_p=0.9,
        select_by="support_accuracy", candidates_per_sample=2, match_known_task=True, guidance_scale=1.5,
    )  # fmt: skip
    assert f"accuracy on the --dataset samples {ref.support_accuracy[0]:.1f} %" in printed
    assert f"drawn under {ref.conditioning_instructions[0]!r}" in " ".join(printed.split())  # console wraps
    assert all(torch.equal(load_file(out)[k], v) for k, v in ref.state_dicts[0].items())
    bad = CliRunner().invoke(app, ["generate", "x", *map(str, args[:-2]), "--select-by", "support_accuracy"])
    assert bad.exit_code == 2 and "labelled samples" in bad.output
    # the message names this command's options, not the library's keyword arguments (newcomer check)
    flat = " ".join(bad.output.split())
    assert "--dataset" in flat and "--select-by support_accuracy" in flat and "dataset=" not in flat
    # task posterior: only iris was trained on this architecture, so there is no other task to weigh it against
    bad = CliRunner().invoke(
        app,
        ["generate", "x", *map(str, args[:-2]), "--select-by", "task_posterior", "--candidate-tasks", "1"],
    )
    flat = " ".join(bad.output.split())
    assert bad.exit_code == 2 and "only ['iris'] was trained on" in flat and "select_by" not in flat
    # a bare keyword in a message becomes the flag too; --select-by takes dashes as well (newcomer check)
    bad = CliRunner().invoke(app, ["generate", "x", *map(str, args[:-2]), "--select-by", "task-posterior"])
    flat = " ".join(bad.output.split())
    assert bad.exit_code == 2 and "--candidate-tasks 1 or more" in flat and "candidate_tasks" not in flat
    # wine's text on iris's architecture: the nearest task overall was not trained on it, and the CLI says so
    printed = invoke(
        "generate", "Classify wines into 3 cultivars from 13 chemical measurements", *args[:-2],
        "--match-known-task", "--exclude-copies", "--candidates", "2",
    )  # fmt: skip
    flat = " ".join(printed.split())
    assert (
        "warning: the known task nearest to the instruction, 'wine', was not trained on this architecture"
        in flat
    )
    assert "drawn under" in flat and "cli.py" not in flat
    # --evaluate on a task whose data do not fit the architecture: a clean error, not a traceback
    bad = CliRunner().invoke(
        app, ["generate", "Sort iris plants by species", *map(str, args[:-2]), "--evaluate", "wine"]
    )
    assert bad.exit_code == 2 and "--evaluate wine: the task's data do not fit --architecture" in " ".join(
        bad.output.split()
    )


def test_generate_errors(run):
    pipe_dir = str(run[0] / "pipe")
    bad = CliRunner().invoke(app, ["generate", "", "--pipeline", pipe_dir])
    assert bad.exit_code == 2 and "instruction must be a non-empty string" in bad.output
    bad = CliRunner().invoke(app, ["generate", "x", "--pipeline", pipe_dir, "--architecture", "nope"])
    assert bad.exit_code == 2 and "unknown architecture" in bad.output


@pytest.mark.slow
def test_bench_parts_runs_only_those(smoke_bench, tmp_path):
    """`bench --parts speed` runs the speed experiment alone (its zoo and pipeline reused from another run)."""
    done, _ = smoke_bench
    for name in ("zoo_seen", "pipeline_seen"):
        shutil.copytree(done / name, tmp_path / name)
    printed = invoke("bench", "--preset", "smoke", "--parts", "speed", "--out", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["parts"] == ["speed"] and "speed" in results and "seen" not in results
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["speed.json"]
    assert (
        not (tmp_path / "zoo_related").exists()
        and "## 6. Speed and memory" in (tmp_path / "report.md").read_text()
    )
    assert re.search(r"speed: 1 model\(s\) [\d.]+ s", printed) and "report" in printed
    bad = CliRunner().invoke(
        app, ["bench", "--preset", "smoke", "--parts", "speed,nope", "--out", str(tmp_path)]
    )
    assert bad.exit_code == 2 and "unknown experiment 'nope'" in bad.output


def test_cli_help_explains_every_command_and_starts_without_torch():
    result = invoke("--help")
    for cmd in ("demo", "generate", "zoo", "train", "corpus", "tasks", "architectures", "bench", "push"):
        assert cmd in result
    for cmd in ("vqvae", "prior", "pipeline"):
        assert cmd in invoke("train", "--help")
    import subprocess
    import sys

    code = "import sys, igpg_hf.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
