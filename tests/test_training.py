"""Training loops: they learn, they resume after an interruption, and they run in 2 CPU processes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import igpg_hf.training.vqvae as tok_mod
from igpg_hf import IGPGPriorConfig, IGPGVQVAEConfig
from igpg_hf.training import (
    DecoderTrainingArgs,
    PriorTrainingArgs,
    VQVAETrainingArgs,
    refine_vqvae_decoder,
    train_prior,
    train_vqvae,
)

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


def test_decoder_refinement_keeps_every_token_and_reconstructs_closer(tmp_path, checkpoints):
    vq = train_vqvae(
        checkpoints,
        IGPGVQVAEConfig.from_preset("tiny"),
        tmp_path / "vqvae",
        VQVAETrainingArgs(steps=40, batch_size=64, log_every=10),
        progress=False,
    )
    encoder_before = {
        k: v.clone() for k, v in vq.state_dict().items() if not k.startswith(("decoder", "dec_pos"))
    }
    args = DecoderTrainingArgs(steps=60, batch_size=64, lr=3e-3, log_every=10)
    refined = refine_vqvae_decoder(checkpoints, vq, tmp_path / "dec", args, progress=False)
    for c in checkpoints:  # the tokens the prior trains on are the same under both
        assert torch.equal(vq.encode(c.state_dict(), c.layout), refined.encode(c.state_dict(), c.layout))
    after = refined.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in encoder_before.items())
    assert all(
        torch.equal(v, vq.state_dict()[k]) for k, v in encoder_before.items()
    )  # caller's model untouched
    log = json.loads((tmp_path / "dec" / "final" / "training_log.json").read_text())
    assert log["recon_mse_after"] < log["recon_mse_before"]
    err = [
        sum(
            float(((c.layout.vectorize(m.reconstruct(c.state_dict(), c.layout)) - c.vector()) ** 2).mean())
            for c in checkpoints
        )
        for m in (vq, refined)
    ]
    assert err[1] < err[0]
    again = refine_vqvae_decoder(checkpoints, vq, tmp_path / "dec", args, progress=False)  # finished: reused
    assert all(torch.equal(v, after[k]) for k, v in again.state_dict().items())
    with pytest.raises(ValueError, match="steps >= 1"):
        refine_vqvae_decoder(checkpoints, vq, tmp_path / "none", DecoderTrainingArgs(steps=0), progress=False)


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


@pytest.mark.slow
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_train_one_model(tmp_path, checkpoints):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU machine: one job of 2 ranks, not 2 jobs.

    Both ranks end with identical weights (gradients averaged) and split every epoch's batches between them:
    together they see each training row once, as one process would (with a plain `Accelerator()` each rank ran
    the whole job on its own).
    """
    from collections import Counter

    from _ddp_train_step import row_digests

    from igpg_hf.corpus import CorpusWriter
    from igpg_hf.modeling_vqvae import IGPGVQVAEModel
    from igpg_hf.training.vqvae import collect_chunks

    with CorpusWriter(tmp_path / "zoo") as w:
        for c in [FakeCheckpoint(t, s) for t in ("mnist", "mnist_rot90") for s in range(4)]:
            w.add(c.sd, {"model_id": c.metadata.model_id, "task": c.metadata.task, "arch_spec": c.spec})
    script = Path(__file__).parent / "_ddp_train_step.py"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port())]
    steps = 12
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [*launch, str(script), str(tmp_path), str(tmp_path / "zoo"), str(steps)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(r["world"] == 2 and "MULTI_CPU" in r["type"] for r in ranks)
    # one model: the same weights on both ranks after training
    for key in ("vqvae_digest", "prior_digest"):
        assert ranks[0][key] == pytest.approx(ranks[1][key], rel=1e-9) and math.isfinite(ranks[0][key])
    # half the batches each: in every epoch the ranks' batches are disjoint shares of the training rows
    vq = IGPGVQVAEModel.from_pretrained(tmp_path / "run" / "vqvae" / "final")
    from igpg_hf.corpus import WeightCorpus

    chunks, _, _ = collect_chunks(vq, WeightCorpus.load(str(tmp_path / "zoo")), fit=False)
    rows, batch = Counter(row_digests(chunks)), 32
    per_rank_epoch = (chunks.shape[0] // batch) // 2  # full batches (drop_last), split over 2 ranks
    assert all(len(r["vqvae_batches"]) == steps for r in ranks) and steps >= per_rank_epoch > 0
    # the one-cycle schedule runs over the optimizer steps, as in one process (not num_processes times faster)
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    expected = []
    for _ in range(steps):
        expected.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert all(r["vqvae_lrs"] == pytest.approx(expected) for r in ranks)
    epoch = [Counter(d for b in r["vqvae_batches"][:per_rank_epoch] for d in b) for r in ranks]
    assert all(sum(e.values()) == per_rank_epoch * batch for e in epoch)
    assert not (epoch[0] + epoch[1]) - rows  # together at most once each: no row trained twice in the epoch


def test_training_records_which_corpus_it_read(tmp_path):
    from igpg_hf.training.provenance import corpus_summary, track_sources

    seen: set = set()
    items = [SimpleNamespace(source="user/zoo"), SimpleNamespace(source="user/zoo")]
    assert list(track_sources(iter(items), seen)) == items and seen == {"user/zoo"}  # one pass
    assert corpus_summary(seen) == {"corpus": "user/zoo", "corpus_repo_id": "user/zoo"}
    # a local folder is named, never published with its path; mixed or unknown sources link no dataset
    assert corpus_summary({str(tmp_path / "zoo")}) == {"corpus": "local folder 'zoo'"}
    assert corpus_summary({"user/zoo", None}) == {"corpus": "user/zoo and checkpoints of unknown origin"}
    assert corpus_summary({None}) == {}


def test_recipe_builds_the_configs_training_and_inference_share():
    from types import SimpleNamespace

    from igpg_hf.training import PipelineRecipe

    vq = SimpleNamespace(
        config=SimpleNamespace(vocab_size=64, tokens_per_chunk=2, chunk_size=32, chunk_mode="layer")
    )
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


def test_recipe_trains_on_the_last_epoch_of_every_run_when_asked():
    from igpg_hf.training import PipelineRecipe
    from igpg_hf.training.pipeline import select_checkpoints

    def ckpt(run, epoch, model_id, seed=0, task="t"):
        m = SimpleNamespace(run_id=run, epoch=epoch, model_id=model_id, seed=seed, task=task, arch_text="mlp")
        return SimpleNamespace(metadata=m)

    cs = [
        ckpt("a", 1, "a1", 1),
        ckpt("b", 3, "b3"),
        ckpt("a", 2, "a2", 1),
        ckpt("", -1, "x", 5, "u"),
        ckpt("b", 2, "b2"),
    ]
    assert [c.metadata.model_id for c in select_checkpoints(cs, "all")] == ["a1", "b3", "a2", "x", "b2"]
    # one per run, the highest epoch, in the given order; a checkpoint without a run is its own
    assert [c.metadata.model_id for c in select_checkpoints(cs, "last_epoch")] == ["b3", "a2", "x"]
    # the lowest seed's run per (task, architecture): run b (seed 0) of task t, x of task u
    assert [c.metadata.model_id for c in select_checkpoints(cs, "all", 1)] == ["b3", "x", "b2"]
    assert [c.metadata.model_id for c in select_checkpoints(cs, "last_epoch", 1)] == ["b3", "x"]
    with pytest.raises(ValueError, match="unknown checkpoint selection"):
        select_checkpoints(cs, "best")
    with pytest.raises(ValueError, match="checkpoints must be one of"):
        PipelineRecipe(checkpoints="best")
    with pytest.raises(ValueError, match="runs_per_architecture"):
        PipelineRecipe(runs_per_architecture=0)
    general = PipelineRecipe.from_preset("general")
    assert general.weights_key("vqvae")["checkpoints"] == "last_epoch"
    # the default is left out of the stage keys, so stage folders written before the field existed still match
    assert "checkpoints" not in PipelineRecipe.from_preset("demo").weights_key("prior")


def test_prior_runs_by_decoded_accuracy_keep_the_runs_the_vqvae_keeps_best():
    """`prior_runs="decoded_accuracy"`: per (task, architecture), the runs whose decoded nets do best on the task's
    training split (the general recipe; the lowest seed of mnist1d_noise's tanh cnn1d decodes to 0.59 of itself)."""
    from igpg_hf.training import PipelineRecipe
    from igpg_hf.training.pipeline import choose_runs_by_decoded_accuracy
    from igpg_hf.zoo import architecture_for_task, load_task_data

    spec = architecture_for_task("iris", "mlp_small")
    data = load_task_data("iris")
    torch.manual_seed(0)
    net = spec.build()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(data.x_train), data.y_train).backward()
        opt.step()
    trained = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def ckpt(model_id, seed, task="iris"):
        m = SimpleNamespace(model_id=model_id, seed=seed, task=task, arch_text=spec.text())
        return SimpleNamespace(
            metadata=m, state_dict=lambda: {**trained, "_id": model_id}, arch=lambda: spec, layout=None
        )

    class Tokenizer:  # what survives encoding and decoding: run "low" loses its head, "nan" everything
        def reconstruct(self, sd, layout=None):
            out = {k: v.clone() for k, v in sd.items() if k != "_id"}
            last = [k for k in out if k.endswith("weight")][-1]
            if sd["_id"] == "low":
                out[last].zero_()
            if sd["_id"] == "nan":
                out[last].fill_(float("nan"))
            return out

    cs = [ckpt("nan", 0), ckpt("low", 1), ckpt("high", 7), ckpt("high2", 3)]
    kept, scores = choose_runs_by_decoded_accuracy(cs, Tokenizer(), 1, progress=False)
    assert [c.metadata.model_id for c in kept] == ["high2"]  # tie with "high": the lower seed
    assert scores["high"] == scores["high2"] > scores["low"] > scores["nan"] == float("-inf")
    kept, _ = choose_runs_by_decoded_accuracy(cs, Tokenizer(), 3, progress=False)
    assert [c.metadata.model_id for c in kept] == ["low", "high", "high2"]  # in the given order
    with pytest.raises(ValueError, match="not registered"):
        choose_runs_by_decoded_accuracy([ckpt("u", 0, task="my_own_task")], Tokenizer(), 1, progress=False)
    with pytest.raises(ValueError, match="prior_runs must be one of"):
        PipelineRecipe(prior_runs="best")
    with pytest.raises(ValueError, match="needs runs_per_architecture"):
        PipelineRecipe(prior_runs="decoded_accuracy")
    general = PipelineRecipe.from_preset("general")
    assert general.weights_key("prior")["prior_runs"] == "decoded_accuracy"
    assert "prior_runs" not in general.weights_key("vqvae")  # the VQ-VAE stage is unchanged
    assert "prior_runs" not in PipelineRecipe.from_preset("demo").weights_key("prior")
