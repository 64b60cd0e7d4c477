"""Run by test_training.py under `torchrun --nproc_per_node 2`: VQ-VAE and prior steps in 2 CPU processes."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import Accelerator

from igpg_hf import IGPGPriorConfig, IGPGVQVAEConfig, WeightLayout
from igpg_hf.training import PriorTrainingArgs, VQVAETrainingArgs, train_prior, train_vqvae
from igpg_hf.zoo import architecture_for_task, get_task


class FakeCheckpoint:
    """The corpus's Checkpoint interface, from random inits (enough for a training step)."""

    def __init__(self, task, seed):
        torch.manual_seed(seed)
        spec = architecture_for_task(task)
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


if __name__ == "__main__":
    out = Path(sys.argv[1])
    acc = Accelerator(cpu=True)
    cks = [FakeCheckpoint(t, s) for t in ("mnist", "mnist_rot90") for s in range(4)]
    vq = train_vqvae(
        cks,
        IGPGVQVAEConfig.from_preset("tiny"),
        out / "tok",
        VQVAETrainingArgs(steps=3, batch_size=32),
        accelerator=acc,
        progress=False,
    )
    pc = IGPGPriorConfig.from_preset("tiny", vocab_size=64, tokens_per_chunk=2, n_positions=168)
    prior = train_prior(
        cks,
        vq,
        TinyText(),
        tiny_tokenizer,
        pc,
        out / "prior",
        PriorTrainingArgs(steps=2, batch_size=2),
        accelerator=acc,
        progress=False,
    )
    # after a synchronized step every process holds the same weights
    digest = float(sum(p.double().sum() for p in prior.parameters()))
    (out / f"rank{acc.process_index}.json").write_text(
        json.dumps({"world": acc.num_processes, "digest": digest, "type": str(acc.distributed_type)})
    )
