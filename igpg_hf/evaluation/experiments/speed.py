"""Speed and memory: generating 1 and N models, prior sampling with and without the KV cache, generation vs
training time, and the VQ-VAE's encode + decode cost against model size."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...zoo.tasks import get_task
from ..hardware import peak_memory
from .base import Experiment, ExperimentResult, fmt
from .fidelity import short_architecture

__all__ = ["Speed", "SpeedConfig", "SpeedResult"]


@dataclass
class SpeedConfig:
    """The zoo whose pipeline is timed, batch sizes, and the architectures of the encode/decode size sweep."""

    zoo: str = "seen"
    samples: int = 100
    kv_samples: int = 10
    sizes: list[dict] = field(
        default_factory=lambda: [
            {"family": "cnn"},
            {"family": "resnet", "input_size": 8, "width": 4},
            {"family": "resnet", "blocks": [3, 3, 3], "width": 16},
            {"family": "resnet", "blocks": [3, 3, 3], "width": 32},
            {"family": "resnet", "blocks": [5, 5, 5], "width": 56},
            {"family": "resnet", "blocks": [9, 9, 9], "width": 88},
        ]
    )

    @classmethod
    def from_preset(cls, name: str) -> SpeedConfig:
        if name == "smoke":
            return cls(samples=5, kv_samples=2, sizes=[{"family": "cnn"}, {"family": "resnet", "width": 16}])
        if name == "gpu":
            return cls(sizes=[*cls().sizes, {"family": "resnet", "blocks": [9, 9, 9], "width": 176}])
        return cls()


@dataclass
class SpeedResult(ExperimentResult):
    """Seconds and peak memory (MB above the start) of each measured call; ``generate_{n}`` per batch size."""

    task: str
    architecture: str
    threads: int
    calls: dict[str, Any]  # generate_1, generate_N, prior_kv_cache_*, train_one_model, zoo_build, ...
    memory_method: str
    kv_cache_speedup: float
    generation_over_training: dict[str, float]
    vqvae_by_size: list[dict]

    def summary(self) -> dict[str, Any]:
        gen = {k: v for k, v in self.calls.items() if k.startswith("generate_")}
        return {
            **{f"{k}_seconds": v["seconds"] for k, v in gen.items()},
            "kv_cache_speedup": self.kv_cache_speedup,
            "train_one_model_seconds": self.calls["train_one_model"]["seconds"],
            "largest_encoded_params": self.vqvae_by_size[-1]["parameters"],
            "largest_encode_decode_seconds": self.vqvae_by_size[-1]["seconds"],
        }

    def summary_lines(self) -> list[str]:
        g = {k: v for k, v in self.calls.items() if k.startswith("generate_")}
        return [
            "speed: "
            + ", ".join(f"{k.removeprefix('generate_')} model(s) {v['seconds']:.2f} s" for k, v in g.items())
            + f" ({self.threads} thread(s)); KV cache {self.kv_cache_speedup:.2f}x"
        ]


def _vqvae_cost(vq, arch: dict) -> dict:
    """Time and peak memory of encoding and decoding one freshly initialized model of ``arch``."""
    from ...weights import WeightLayout
    from ...zoo.architectures import ArchSpec

    spec = ArchSpec.from_dict(arch)
    module = spec.build()
    sd, params = module.state_dict(), sum(p.numel() for p in module.parameters())
    layout = WeightLayout.from_state_dict(sd)
    toks, t_enc, m_enc, _ = peak_memory(lambda: vq.encode(sd, layout))
    _, t_dec, m_dec, _ = peak_memory(lambda: vq.decode(toks, layout, fill=sd))
    return {
        "architecture": spec.text(),
        "parameters": params,
        "tokens": toks.numel(),
        "encode_seconds": t_enc,
        "decode_seconds": t_dec,
        "seconds": t_enc + t_dec,
        "encode_peak_mb": m_enc,
        "decode_peak_mb": m_dec,
        "peak_mb": max(m_enc, m_dec),
    }


class Speed(Experiment):
    name, title, Config, Result = "speed", "Speed and memory", SpeedConfig, SpeedResult

    def run(self, ctx) -> SpeedResult:
        from ...conditioning import encode_text
        from ...modeling_prior import IGPGConditions
        from ...sampling import SamplingConfig, sample_weight_tokens
        from ...zoo.training import HyperParams, train_model

        cfg, z = self.config, ctx.zoo(self.config.zoo)
        task = sorted(z.by_task)[0]
        spec, instr, pipe = z.by_task[task][0].arch(), get_task(task).instruction, z.pipe
        pipe(instr, architecture=spec, dataset=task, num_samples=1, seed=0)  # warm-up
        timings: dict[str, Any] = {}
        for n in (1, cfg.samples):
            _, sec, mb, method = peak_memory(
                lambda n=n: pipe(instr, architecture=spec, dataset=task, num_samples=n, seed=1)
            )
            timings[f"generate_{n}"] = {"seconds": sec, "peak_mb": mb, "seconds_per_model": sec / n}
        emb = encode_text([instr, spec.text()], pipe.text_encoder, pipe.tokenizer)
        cond = IGPGConditions(text_embeds=emb[:1], arch_embeds=emb[1:], **pipe._text_states(instr))
        n_tok = pipe.vqvae.num_tokens(z.by_task[task][0].layout)
        for cache in (True, False):
            _, sec, mb, _ = peak_memory(
                lambda c=cache: sample_weight_tokens(
                    pipe.prior,
                    cond,
                    n_tok,
                    cfg.kv_samples,
                    SamplingConfig(temperature=z.settings.temperature),
                    0,
                    c,
                    positions=pipe.prior.weight_positions(z.by_task[task][0].layout)
                    if pipe.prior.uses_structure
                    else None,
                )
            )
            timings[f"prior_kv_cache_{str(cache).lower()}"] = {
                "tokens_per_second": n_tok * cfg.kv_samples / sec,
                "seconds": sec,
                "peak_mb": mb,
                "samples": cfg.kv_samples,
                "tokens_per_model": n_tok,
            }
        hp = HyperParams(lr=1e-3, epochs=z.epochs)
        _, sec, mb, _ = peak_memory(lambda: train_model(spec, task, hp, [z.epochs]))
        timings["train_one_model"] = {"seconds": sec, "peak_mb": mb, "epochs": z.epochs}
        stats_path = ctx.out / "zoo_builds.json"
        if stats_path.exists():
            st = json.loads(stats_path.read_text()).get(z.name, {})
            if st.get("runs_trained"):
                timings["zoo_build"] = {
                    "seconds": st["seconds"],
                    "runs": st["runs_trained"],
                    "workers": st["num_workers"],
                    "cpu_seconds_per_model": st["seconds"] * st["num_workers"] / st["runs_trained"],
                }
        return SpeedResult(
            task=task,
            architecture=spec.text(),
            threads=torch.get_num_threads(),
            calls=timings,
            memory_method=method,
            kv_cache_speedup=timings["prior_kv_cache_true"]["tokens_per_second"]
            / timings["prior_kv_cache_false"]["tokens_per_second"],
            generation_over_training={
                "one_model": timings["generate_1"]["seconds"] / sec,
                f"per_model_in_batch_of_{cfg.samples}": timings[f"generate_{cfg.samples}"][
                    "seconds_per_model"
                ]
                / sec,
            },
            vqvae_by_size=[_vqvae_cost(pipe.vqvae, arch) for arch in cfg.sizes],
        )

    def report(self, r: SpeedResult) -> list[str]:
        g1, gn = (
            r.calls["generate_1"],
            next(v for k, v in r.calls.items() if k.startswith("generate_") and k != "generate_1"),
        )
        n = round(gn["seconds"] / gn["seconds_per_model"])
        tr = r.calls["train_one_model"]
        kv1, kv0 = r.calls["prior_kv_cache_true"], r.calls["prior_kv_cache_false"]
        ratio = r.generation_over_training
        zoo_build = r.calls.get("zoo_build")
        lines = [
            "## 6. Speed and memory",
            "",
            f"CPU, {r.threads} torch thread(s); memory = {r.memory_method} (0: the call needed no memory beyond "
            f"what the process already held). Architecture: {r.architecture}.",
            "",
            "| what | seconds | peak MB |",
            "|---|---|---|",
            f"| generate 1 model (pipeline call) | {fmt(g1['seconds'], 2)} | {fmt(g1['peak_mb'])} |",
            f"| generate {n} models | {fmt(gn['seconds'], 2)} ({fmt(gn['seconds_per_model'], 3)} per model) | "
            f"{fmt(gn['peak_mb'])} |",
            f"| train the same model ({tr['epochs']} epochs, `train_model`) | {fmt(tr['seconds'], 2)} | "
            f"{fmt(tr['peak_mb'])} |",
            "",
            f"Prior sampling ({kv1['samples']} samples × {kv1['tokens_per_model']} tokens): "
            f"{fmt(kv1['tokens_per_second'], 0)} tokens/s with the KV cache, {fmt(kv0['tokens_per_second'], 0)} "
            f"without ({fmt(r.kv_cache_speedup, 2)}×).",
            "",
            "Generation time / training time: "
            + ", ".join(f"{k.replace('_', ' ')} {fmt(v, 4)}" for k, v in ratio.items())
            + (
                f"; the zoo build took {fmt(zoo_build['cpu_seconds_per_model'])} CPU-seconds per model "
                f"({zoo_build['runs']} runs on {zoo_build['workers']} workers)."
                if zoo_build
                else "."
            ),
            "",
            "Encode + decode (`vqvae.encode` + `vqvae.decode`) against size (the trained VQ-VAE; entries it never saw "
            "fall back to role/global statistics; positions fold modulo its max_positions):",
            "",
            "| parameters | tokens | encode s | decode s | peak MB (encode / decode) | architecture |",
            "|---|---|---|---|---|---|",
        ]
        for x in r.vqvae_by_size:
            lines.append(
                f"| {x['parameters']:,} | {x['tokens']:,} | {fmt(x['encode_seconds'], 3)} | "
                f"{fmt(x['decode_seconds'], 3)} | {fmt(x['encode_peak_mb'])} / {fmt(x['decode_peak_mb'])} | "
                f"{short_architecture(x['architecture'])} |"
            )
        return lines + ["", "![speed](speed.png)", ""]

    def plot(self, r: SpeedResult, out_dir: Path) -> Path:
        """Encode + decode time and peak memory against parameters, log axes."""
        import matplotlib.pyplot as plt

        from ..report import save_figure

        sizes = r.vqvae_by_size
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.4))
        p = [x["parameters"] for x in sizes]
        a1.loglog(p, [x["encode_seconds"] for x in sizes], "-o", label="encode")
        a1.loglog(p, [x["decode_seconds"] for x in sizes], "-o", label="decode")
        a1.set_xlabel("parameters")
        a1.set_ylabel("seconds")
        a1.legend(fontsize=7)
        a2.loglog(p, [max(x["peak_mb"], 0.1) for x in sizes], "-o", color="#8172b3")
        a2.set_xlabel("parameters")
        a2.set_ylabel("peak memory (MB)")
        fig.suptitle("VQ-VAE encode + decode vs model size", fontsize=10)
        return save_figure(fig, out_dir / "speed.png")


EXPERIMENT = Speed
