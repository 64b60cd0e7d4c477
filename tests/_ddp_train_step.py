"""Run by test_training.py under ``accelerate launch --multi_gpu --num_processes 2`` on the CPU: the README's
``accelerate launch ... -m igpg_hf.cli train vqvae`` command, plus a prior trained through the library.

Nothing here builds an `Accelerator`: the library's own must form the 2-process group. Each rank records what
it trained on (a digest of every training batch of the VQ-VAE) and the weights it ended with.

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 tests/_ddp_train_step.py OUT CORPUS STEPS
"""

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from igpg_hf import IGPGPriorConfig, WeightLayout
from igpg_hf.zoo import architecture_for_task, get_task


class FakeCheckpoint:
    """The corpus's Checkpoint interface, from random inits (enough for a training step)."""

    def __init__(self, task, seed):
        torch.manual_seed(seed)
        spec = architecture_for_task(task)
        self.spec = spec
        self.sd = spec.build().state_dict()
        self.layout = WeightLayout.from_state_dict(self.sd)
        self.metadata = SimpleNamespace(
            model_id=f"{task}-{seed}",
            task=task,
            instruction=get_task(task).instruction,
            arch_text=spec.text(),
        )

    def state_dict(self):
        return self.sd

    def vector(self):
        return self.layout.vectorize(self.sd)


class TinyText(torch.nn.Module):
    """A stand-in text encoder (hash of the text -> embedding) so the subprocesses start fast."""

    device = torch.device("cpu")

    def __call__(self, input_ids, attention_mask, **_):
        g = torch.Generator().manual_seed(int(input_ids.sum()))
        return SimpleNamespace(
            last_hidden_state=torch.randn(input_ids.shape[0], input_ids.shape[1], 384, generator=g)
        )


def tiny_tokenizer(texts, **_):
    ids = torch.tensor([[sum(map(ord, t)) % 997 + 1] for t in texts])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def row_digests(chunks: torch.Tensor) -> list[str]:
    return [hashlib.sha1(r.numpy().tobytes()).hexdigest()[:16] for r in chunks.detach().float().cpu()]


def weights_digest(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


if __name__ == "__main__":
    out, corpus, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    from igpg_hf.cli import app
    from igpg_hf.modeling_vqvae import IGPGVQVAEModel
    from igpg_hf.training import PriorTrainingArgs, train_prior

    seen, trained, lrs = [], {}, []
    real_forward = IGPGVQVAEModel.forward

    def recording_forward(self, chunks, *args, **kwargs):
        if self.training:
            seen.append(row_digests(chunks))
            lrs.append(trained.get("lr"))
            trained["vqvae"] = self
        return real_forward(self, chunks, *args, **kwargs)

    IGPGVQVAEModel.forward = recording_forward
    real_step = torch.optim.lr_scheduler.OneCycleLR.step

    def recording_step(self, *args, **kwargs):  # the learning rate of the next optimizer step
        real_step(self, *args, **kwargs)
        trained["lr"] = self.get_last_lr()[0]

    torch.optim.lr_scheduler.OneCycleLR.step = recording_step
    # the README's command, as `accelerate launch -m igpg_hf.cli` runs it
    argv = ["train", "vqvae", "--corpus", corpus, "--out", str(out / "run"), "--preset", "smoke"]
    argv += ["--vqvae-preset", "tiny"]
    app(argv + ["--steps", steps, "--batch-size", "32"], standalone_mode=False)
    IGPGVQVAEModel.forward = real_forward
    torch.optim.lr_scheduler.OneCycleLR.step = real_step
    vq = trained["vqvae"].eval()

    from accelerate import PartialState

    state = PartialState()
    cks = [FakeCheckpoint(t, s) for t in ("mnist", "mnist_rot90") for s in range(4)]
    pc = IGPGPriorConfig.from_preset("tiny", vocab_size=64, tokens_per_chunk=2, n_positions=168)
    prior = train_prior(
        cks,
        vq,
        TinyText(),
        tiny_tokenizer,
        pc,
        out / "prior",
        PriorTrainingArgs(steps=2, batch_size=2),
        progress=False,
    )
    (out / f"rank{state.process_index}.json").write_text(
        json.dumps(
            {
                "world": state.num_processes,
                "type": str(state.distributed_type),
                "vqvae_batches": seen,
                "vqvae_lrs": lrs,
                "vqvae_digest": weights_digest(vq),
                "prior_digest": weights_digest(prior),
            }
        )
    )
