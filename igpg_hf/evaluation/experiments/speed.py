"""Speed and memory: generating 1 and N models, the decode loop against transformers' ``generate()`` and against a
real no-cache decode (each against the machine's measured bound), generation beside a busy process, generation
time and peak memory against model size up to the largest model asked for, generation vs training time, and the
VQ-VAE's encode + decode cost against model size.

The loop-vs-``generate()`` figures use a prior of the pipeline prior's sizes with absolute positions and random
weights: ``generate()`` cannot embed a structure prior's token places, and the cost of a decode step does not
depend on what the weights learned. Everything else runs the pipeline's own prior and VQ-VAE."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...sampling import SamplingConfig
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
    # the loop vs generate(): batch sizes (one model, many), repeats (interleaved), tokens per model (None: the
    # zoo's); one pipeline call beside a busy process, repeats (0: not measured)
    sampling_samples: list[int] = field(default_factory=lambda: [1, 100])
    sampling_repeats: int = 3
    sampling_tokens: int | None = None
    busy_repeats: int = 3
    # generation (sampling + decoding one model) against size, one sample, top-p 0.9, no condition: with the
    # pipeline's own prior (its blocks overlap: one by one) ...
    generation_sizes: list[dict] = field(
        default_factory=lambda: [
            {"family": "cnn"},
            {"family": "resnet", "input_size": 8, "width": 4},
            {"family": "resnet", "in_channels": 3, "input_size": 32, "blocks": [3, 3, 3], "width": 16},
        ]
    )
    # ... and with a prior of its sizes trained with block_overlap=0 (random weights), whose blocks the loop
    # decodes side by side; the last is the largest model generated (resnet20 at width 156: 25.7 M parameters)
    parallel_sizes: list[dict] = field(
        default_factory=lambda: [
            {"family": "cnn"},
            {"family": "resnet", "input_size": 8, "width": 4},
            {"family": "resnet", "in_channels": 3, "input_size": 32, "blocks": [3, 3, 3], "width": 16},
            {"family": "resnet", "in_channels": 3, "input_size": 32, "blocks": [3, 3, 3], "width": 48},
            {"family": "resnet", "in_channels": 3, "input_size": 32, "blocks": [3, 3, 3], "width": 156},
        ]
    )

    # VQ-VAE encode + decode of one fresh model against size
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

    def __post_init__(self):
        if len(self.sampling_samples) != 2:
            raise ValueError(
                f"sampling_samples needs two batch sizes (one, many), got {self.sampling_samples}"
            )

    @classmethod
    def from_preset(cls, name: str) -> SpeedConfig:
        if name == "smoke":
            return cls(
                samples=5,
                kv_samples=2,
                sizes=[{"family": "cnn"}, {"family": "resnet", "width": 16}],
                sampling_samples=[1, 5],
                sampling_repeats=1,
                sampling_tokens=40,
                busy_repeats=1,
                generation_sizes=[{"family": "cnn"}, {"family": "resnet", "input_size": 8, "width": 4}],
                parallel_sizes=[{"family": "resnet", "input_size": 8, "width": 4}],
            )
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
    # `sampling_speed_summary` (loop vs generate() vs no-cache, bounds), `busy_neighbour_slowdown` of one
    # pipeline call, `generation_cost_by_size` rows (empty in results written before they were measured)
    sampling: dict = field(default_factory=dict)
    busy_neighbour: dict = field(default_factory=dict)
    generation_by_size: list[dict] = field(default_factory=list)

    def largest_generated(self) -> dict | None:
        done = [r for r in self.generation_by_size if "seconds" in r]
        return max(done, key=lambda r: r["parameters"]) if done else None

    def summary(self) -> dict[str, Any]:
        gen = {k: v for k, v in self.calls.items() if k.startswith("generate_")}
        out = {
            **{f"{k}_seconds": v["seconds"] for k, v in gen.items()},
            "kv_cache_speedup": self.kv_cache_speedup,
            "train_one_model_seconds": self.calls["train_one_model"]["seconds"],
            "largest_encoded_params": self.vqvae_by_size[-1]["parameters"],
            "largest_encode_decode_seconds": self.vqvae_by_size[-1]["seconds"],
        }
        s = self.sampling.get("summary", {})
        out.update({k: v for k, v in s.items() if k.startswith(("sampling_speedup_", "cache_speedup_"))})
        out.update({k: v for k, v in s.items() if k.startswith(("loop_share_of_", "tokens_identical_"))})
        if self.busy_neighbour:
            out["busy_neighbour_slowdown"] = self.busy_neighbour["slowdown"]
        big = self.largest_generated()
        if big:
            out.update(
                largest_generated_params=big["parameters"],
                largest_generated_tokens=big["tokens"],
                largest_generated_seconds=big["seconds"],
                largest_generated_peak_mb=big["peak_mb"],
                largest_generated_tokens_per_second=big["tokens_per_second"],
            )
        return out

    def summary_lines(self) -> list[str]:
        g = {k: v for k, v in self.calls.items() if k.startswith("generate_")}
        lines = [
            "speed: "
            + ", ".join(f"{k.removeprefix('generate_')} model(s) {v['seconds']:.2f} s" for k, v in g.items())
            + f" ({self.threads} thread(s)); KV cache {self.kv_cache_speedup:.2f}x"
        ]
        s = self.summary()
        ups = [k for k in s if k.startswith("sampling_speedup_")]
        if ups:
            lines.append(
                "speed: decode loop over generate() "
                + ", ".join(f"{s[k]:.2f}x at {k.removeprefix('sampling_speedup_')}" for k in ups)
            )
        if "largest_generated_params" in s:
            lines.append(
                f"speed: largest generated model {s['largest_generated_params']:,} parameters in "
                f"{s['largest_generated_seconds']:.0f} s, peak {s['largest_generated_peak_mb']:.0f} MB"
            )
        return lines


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


def _twin(prior, **changes):
    """A prior of ``prior``'s sizes with config ``changes`` and random weights (seed 0): the cost of a decode step
    does not depend on what the weights learned."""
    from ...configuration_igpg import IGPGPriorConfig
    from ...modeling_prior import IGPGPriorModel

    config = IGPGPriorConfig.from_dict({**prior.config.to_dict(), **changes})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return IGPGPriorModel(config).eval()


class Speed(Experiment):
    name, title, Config, Result = "speed", "Speed and memory", SpeedConfig, SpeedResult

    def run(self, ctx) -> SpeedResult:
        from ...conditioning import encode_text
        from ...modeling_prior import IGPGConditions
        from ...sampling import sample_weight_tokens
        from ...zoo.training import HyperParams, train_model
        from ..speed_measures import busy_neighbour_slowdown, generation_cost_by_size

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
        cond = IGPGConditions(text_embeds=emb[:1], arch_embeds=emb[1:], **pipe._text_states([instr]))
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
        sampling_fig, busy, by_size = self._loop_vs_generate(pipe.prior, n_tok), {}, []
        if cfg.busy_repeats:
            busy = busy_neighbour_slowdown(
                lambda: pipe(instr, architecture=spec, dataset=task, num_samples=1, seed=1), cfg.busy_repeats
            )
        top_p = SamplingConfig(top_p=0.9)
        if cfg.generation_sizes:
            rows = generation_cost_by_size(pipe.prior, pipe.vqvae, cfg.generation_sizes, 1, top_p)
            by_size += [r | {"prior": "pipeline", "parallel_blocks": False} for r in rows]
        if cfg.parallel_sizes and pipe.prior.uses_structure:
            twin = _twin(pipe.prior, block_overlap=0)
            rows = generation_cost_by_size(twin, pipe.vqvae, cfg.parallel_sizes, 1, top_p)
            by_size += [
                r | {"prior": "block_overlap=0, random weights", "parallel_blocks": True} for r in rows
            ]
        return SpeedResult(
            sampling=sampling_fig,
            busy_neighbour=busy,
            generation_by_size=by_size,
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

    def _loop_vs_generate(self, prior, zoo_tokens: int) -> dict:
        """`sampling_speed_summary` on a prior of ``prior``'s sizes with absolute positions (random weights)."""
        from ..speed_measures import sampling_speed_summary

        cfg = self.config
        twin = _twin(prior, position_scheme="absolute")
        res = sampling_speed_summary(
            twin,
            cfg.sampling_tokens or zoo_tokens,
            tuple(cfg.sampling_samples),
            cfg.sampling_repeats,
            SamplingConfig(top_p=0.9),
        )
        res["prior"] = "the pipeline prior's sizes, absolute positions, random weights"
        return res

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
        return lines + ["", *self._sampling_lines(r), *self._size_lines(r), "![speed](speed.png)", ""]

    @staticmethod
    def _sampling_lines(r: SpeedResult) -> list[str]:
        """The decode loop against generate() and a real no-cache decode, each against the measured bound."""
        if not r.sampling:
            return []
        s, b = r.sampling["summary"], r.sampling["bounds"]
        one, many = (k.removeprefix("samples_") for k in r.sampling if k.startswith("samples_"))
        r1, rn = r.sampling[f"samples_{one}"], r.sampling[f"samples_{many}"]
        threads = r1["threads"]
        lines = [
            f'Prior sampling, decode loop (`backend="loop"`, the default) against transformers\' `generate()` '
            f"and a real no-cache decode ({r1['num_tokens']} tokens per model, {threads} thread(s), top-p 0.9, "
            f"min of {r1['loop']['repeats']} interleaved repeats; {r.sampling.get('prior', 'the pipeline prior')}; "
            f"load average {fmt(r1['load_average'][0], 2)}):",
            "",
            "| models | loop tokens/s | generate() tokens/s | loop / generate() | no-cache tokens/s | bound tokens/s "
            "| loop / bound | tokens identical |",
            "|---|---|---|---|---|---|---|---|",
            f"| {one} | {fmt(r1['loop']['tokens_per_second'], 0)} | {fmt(r1['generate']['tokens_per_second'], 0)} | "
            f"{fmt(s[f'sampling_speedup_{one}'], 2)}x | {fmt(r1['no_cache']['tokens_per_second'], 0)} | "
            f"{fmt(s[f'weight_read_bound_tokens_per_second_{one}'], 0)} (weight reads) | "
            f"{fmt(s[f'loop_share_of_read_bound_{one}'], 3)} | {s[f'tokens_identical_{one}']} |",
            f"| {many} | {fmt(rn['loop']['tokens_per_second'], 0)} | {fmt(rn['generate']['tokens_per_second'], 0)} | "
            f"{fmt(s[f'sampling_speedup_{many}'], 2)}x | | {fmt(s[f'flop_bound_tokens_per_second_{many}'], 0)} "
            f"(FLOPs) | {fmt(s[f'loop_share_of_flop_bound_{many}'], 3)} | {s[f'tokens_identical_{many}']} |",
            "",
            f"Bounds measured here: matmul {', '.join(f'{fmt(v, 1)} GFLOP/s ({k} thread(s))' for k, v in b['matmul_gflops'].items())}; "
            f"weight reads {fmt(b['read_gb_s'], 1)} GB/s over {b['read_bytes'] / 2**20:.1f} MiB; one trivial op "
            f"{fmt(b['op_latency_us'], 1)} us (a decode step runs about 80 ops: the per-op floor, not the bounds, "
            "limits one model).",
            "",
        ]
        if r.busy_neighbour:
            bn = r.busy_neighbour
            lines += [
                f'One pipeline call beside one busy process (`python -c "while True: pass"`): median '
                f"{fmt(bn['busy']['median_seconds'], 3)} s against {fmt(bn['quiet']['median_seconds'], 3)} s alone "
                f"({fmt(bn['slowdown'], 2)}x; {bn['quiet']['repeats']} alternated repeats, load average "
                f"{fmt(bn['load_average'][0], 2)}).",
                "",
            ]
        return lines

    @staticmethod
    def _size_lines(r: SpeedResult) -> list[str]:
        """Generation (sampling + decoding one model) against size, with the pipeline's prior and VQ-VAE."""
        if not r.generation_by_size:
            return []
        lines = [
            "Generating one model (prior sampling + VQ-VAE decoding with the pipeline's VQ-VAE, top-p 0.9, no "
            'condition) against its size; peak memory above the process\'s baseline. Prior "pipeline": the '
            'pipeline\'s own, whose blocks overlap, so they are sampled one by one; "block_overlap=0": a prior of '
            "the same sizes whose blocks share no tokens (random weights: the cost does not depend on them), "
            "sampled side by side (`parallel_blocks`). The pipeline's prior was not trained that way: its "
            "generation of the large sizes would cost the one-by-one rate.",
            "",
            "| parameters | tokens | prior | sampling s | decode s | total s | tokens/s | peak MB | model MB | "
            "architecture |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for x in r.generation_by_size:
            if "seconds" not in x:
                lines.append(
                    f"| {x['parameters']:,} | {x['tokens']:,} | {x.get('prior', '')} | skipped: {x['skipped']} | | | | | "
                    f"| {short_architecture(x['architecture'])} |"
                )
                continue
            lines.append(
                f"| {x['parameters']:,} | {x['tokens']:,} | {x.get('prior', 'pipeline').split(',')[0]} | "
                f"{fmt(x['sampling_seconds'], 2)} | "
                f"{fmt(x['decode_seconds'], 2)} | {fmt(x['seconds'], 2)} | {fmt(x['tokens_per_second'], 0)} | "
                f"{fmt(x['peak_mb'])} | {fmt(x['model_mb'])} | {short_architecture(x['architecture'])} |"
            )
        return lines + [""]

    def plot(self, r: SpeedResult, out_dir: Path) -> Path:
        """Generation time and peak memory against parameters (and encode + decode time), log axes."""
        import matplotlib.pyplot as plt

        from ..report import save_figure

        gen = [x for x in r.generation_by_size if "seconds" in x]
        fig, axes = plt.subplots(1, 3 if gen else 2, figsize=(12 if gen else 8, 3.4))
        a1, a2 = axes[-2], axes[-1]
        if gen:
            a0 = axes[0]
            for parallel, label in ((False, "blocks one by one (pipeline prior)"), (True, "parallel blocks")):
                xs = [x for x in gen if bool(x.get("parallel_blocks")) == parallel]
                if not xs:
                    continue
                p = [x["parameters"] for x in xs]
                a0.loglog(p, [x["seconds"] for x in xs], "-o", label=label)
                a2.loglog(p, [max(x["peak_mb"], 0.1) for x in xs], "-o", label=f"generate, {label}")
            a0.set_xlabel("parameters")
            a0.set_ylabel("seconds (sample + decode one model)")
            a0.set_title("generation", fontsize=9)
            a0.legend(fontsize=7)
        sizes = r.vqvae_by_size
        p = [x["parameters"] for x in sizes]
        a1.loglog(p, [x["encode_seconds"] for x in sizes], "-o", label="encode")
        a1.loglog(p, [x["decode_seconds"] for x in sizes], "-o", label="decode")
        a1.set_xlabel("parameters")
        a1.set_ylabel("seconds")
        a1.set_title("VQ-VAE encode + decode", fontsize=9)
        a1.legend(fontsize=7)
        a2.loglog(p, [max(x["peak_mb"], 0.1) for x in sizes], "-o", color="#8172b3", label="encode / decode")
        a2.set_xlabel("parameters")
        a2.set_ylabel("peak memory above baseline (MB)")
        a2.legend(fontsize=7)
        fig.suptitle("cost vs model size", fontsize=10)
        return save_figure(fig, out_dir / "speed.png")


EXPERIMENT = Speed
