"""Training loops: they learn, they resume after an interruption, and they run in 2 CPU processes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import igpg_hf.training.vqvae as tok_mod
from igpg_hf import IGPGPriorConfig, IGPGVQVAEConfig
from igpg_hf.training import PriorTrainingArgs, VQVAETrainingArgs, train_prior, train_vqvae

sys.path.insert(0, str(Path(__file__).parent))
from _ddp_train_step import FakeCheckpoint, TinyText, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints():
    return [FakeCheckpoint(t, s) for t in ("mnist", "mnist_rot90") for s in range(3)]


def test_vqvae_learns_and_saves(tmp_path, checkpoints):
    vq = train_vqvae(
        checkpoints,
        IGPGVQVAEConfig.from_preset("tiny"),
        tmp_path,
        VQVAETrainingArgs(steps=80, batch_size=64, log_every=10),
        progress=False,
    )
    log = json.loads((tmp_path / "final" / "training_log.json").read_text())
    assert log["history"][-1]["recon_mse"] < log["history"][0]["recon_mse"]
    assert (tmp_path / "final" / "config.json").exists() and vq.config.weight_stats


def test_vqvae_resumes_after_interruption(tmp_path, checkpoints, monkeypatch, caplog):
    real = tok_mod.gumbel_temperature

    def crash_at_15(step, *a, **k):
        if step == 15:
            raise KeyboardInterrupt("simulated kill")
        return real(step, *a, **k)

    args = VQVAETrainingArgs(steps=30, batch_size=32, checkpoint_every=10, log_every=5)
    monkeypatch.setattr(tok_mod, "gumbel_temperature", crash_at_15)
    with pytest.raises(KeyboardInterrupt):
        train_vqvae(checkpoints, IGPGVQVAEConfig.from_preset("tiny"), tmp_path, args, progress=False)
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 10 and not (tmp_path / "final").exists()
    monkeypatch.setattr(tok_mod, "gumbel_temperature", real)
    with caplog.at_level("INFO"):
        train_vqvae(checkpoints, IGPGVQVAEConfig.from_preset("tiny"), tmp_path, args, progress=False)
    assert "resumed from step 10" in caplog.text
    steps = [h["step"] for h in json.loads((tmp_path / "final" / "training_log.json").read_text())["history"]]
    assert steps == [5, 10, 15, 20, 25, 30]  # history before the crash kept, nothing trained twice


def test_prior_learns_a_tiny_corpus(tmp_path, checkpoints):
    vq = train_vqvae(
        checkpoints,
        IGPGVQVAEConfig.from_preset("tiny"),
        tmp_path / "tok",
        VQVAETrainingArgs(steps=20, batch_size=64),
        progress=False,
    )
    cfg = IGPGPriorConfig.from_preset("tiny", vocab_size=64, tokens_per_chunk=2, n_positions=168)
    train_prior(
        checkpoints,
        vq,
        TinyText(),
        tiny_tokenizer,
        cfg,
        tmp_path / "prior",
        PriorTrainingArgs(steps=60, batch_size=6, lr=5e-3, log_every=10),
        progress=False,
    )
    hist = json.loads((tmp_path / "prior" / "final" / "training_log.json").read_text())["history"]
    assert hist[-1]["loss"] < 0.8 * hist[0]["loss"]
    # the saved prior knows its training sequences by fingerprint (for the pipeline's copy flags)
    from igpg_hf import IGPGPriorModel
    from igpg_hf.sampling import sequence_hash

    prior = IGPGPriorModel.from_pretrained(tmp_path / "prior" / "final")
    saved = prior.config.training_sequence_hashes
    assert saved == sorted({sequence_hash(vq.encode(c.state_dict(), c.layout)) for c in checkpoints})
    # ... what it was trained on (tasks, sampled wordings, architectures, a calibrated OOD threshold), and its
    # instruction pooling, trained on the tasks' wordings and frozen before the prior's own steps
    known = prior.config.known_tasks
    assert set(known) == {"mnist", "mnist_rot90"} and known["mnist"]["num_checkpoints"] == 3
    from igpg_hf.zoo.instructions import training_instructions

    n_mnist = min(PriorTrainingArgs().wordings_per_task, len(training_instructions("mnist")))
    assert known["mnist"]["num_training_wordings"] == n_mnist
    assert prior.known_text_embeds.shape == (2 * PriorTrainingArgs().known_wordings_per_task, 384)
    assert prior.config.ood_threshold is not None and "heldout_flag_rate" in prior.config.ood_calibration
    assert prior.config.text_pooling == "attention" and hasattr(prior, "text_pool")


def test_any_order_of_the_checkpoints_trains_identical_weights(tmp_path, checkpoints):
    """Both trainers put the checkpoints in canonical order themselves (before, forward and reversed lists gave
    different VQ-VAE weights after 20 steps of the tiny preset)."""
    models = {}
    for name, order in (("forward", checkpoints), ("reversed", checkpoints[::-1])):
        vq = train_vqvae(
            order,
            IGPGVQVAEConfig.from_preset("tiny"),
            tmp_path / name / "vqvae",
            VQVAETrainingArgs(steps=20, batch_size=16),
            progress=False,
        )
        cfg = IGPGPriorConfig.from_preset("tiny", vocab_size=64, tokens_per_chunk=2, n_positions=168)
        prior = train_prior(
            order,
            vq,
            TinyText(),
            tiny_tokenizer,
            cfg,
            tmp_path / name / "prior",
            PriorTrainingArgs(steps=6, batch_size=4),
            progress=False,
        )
        models[name] = (vq.state_dict(), prior.state_dict())
    for a, b in zip(models["forward"], models["reversed"], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prior_rejects_mismatched_vqvae(tmp_path, checkpoints):
    vq = train_vqvae(
        checkpoints,
        IGPGVQVAEConfig.from_preset("tiny"),
        tmp_path / "tok",
        VQVAETrainingArgs(steps=2, batch_size=64),
        progress=False,
    )
    cfg = IGPGPriorConfig.from_preset("tiny", vocab_size=99, tokens_per_chunk=2, n_positions=168)
    with pytest.raises(ValueError, match="vocab_size 99"):
        train_prior(checkpoints, vq, TinyText(), tiny_tokenizer, cfg, tmp_path / "prior", progress=False)


@pytest.mark.slow
def test_two_process_cpu_training_step(tmp_path):
    script = Path(__file__).parent / "_ddp_train_step.py"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(r["world"] == 2 and "MULTI_CPU" in r["type"] for r in ranks)
    # different data shards, same weights after the step: gradients were all-reduced
    assert ranks[0]["digest"] == pytest.approx(ranks[1]["digest"], rel=1e-6)
    assert torch.tensor(ranks[0]["digest"]).isfinite()


def test_recipe_builds_the_configs_training_and_inference_share():
    from types import SimpleNamespace

    from igpg_hf.training import PipelineRecipe

    vq = SimpleNamespace(config=SimpleNamespace(vocab_size=64, tokens_per_chunk=2))
    smoke = PipelineRecipe.from_preset("smoke")
    c = smoke.prior_config(vq, longest_sequence=300)
    assert (c.n_positions, c.context_rule) == (304, "longest")  # the longest sequence + the 4-token prefix
    assert c.text_encoder_name == "sentence-transformers/all-MiniLM-L6-v2" and c.support_per_class == 5
    assert smoke.prior_config(vq, 10).n_positions == 128  # never below the preset's context
    assert smoke.prior_config(vq, 5000).n_positions == 1024  # capped: longer models go block by block
    fixed = smoke.with_changes({"n_positions": 96, "support_per_class": 3}, prior_training={"steps": 7})
    c = fixed.prior_config(vq, 5000)
    assert (c.n_positions, c.context_rule, c.support_per_class, fixed.prior_training.steps) == (
        96,
        "fixed",
        3,
        7,
    )
    assert smoke.prior_training.steps == 40  # with_changes copies
    with pytest.raises(ValueError, match="may not set"):
        PipelineRecipe(prior_overrides={"n_positions": 64})
    with pytest.raises(ValueError, match="unknown pipeline recipe preset"):
        PipelineRecipe.from_preset("huge")
    with pytest.raises(ValueError, match="unknown IGPGPriorConfig field"):
        PipelineRecipe(prior_overrides={"n_layers": 3}).prior_config(vq, 10)
