"""The benchmark's markdown report and plots, written from ``results.json`` alone (every figure from the run)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

__all__ = ["write_report", "plot_all"]

LABELS = {
    "random_init": "random init",
    "zoo": "zoo checkpoints (mean)",
    "generated": "generated (mean ± std)",
    "generated_best_of_5": "generated, best of 5 on 500 labelled",
    "nearest_by_embedding": "retrieval: nearest by instruction embedding",
    "best_on_500": "retrieval: best zoo checkpoint on 500 labelled",
    "noise": "checkpoint + Gaussian noise",
    "average": "average of checkpoints",
    "generated_aligned": "generated, label-aligned on 500 labelled (mean ± std)",
    "nearest_by_embedding_aligned": "retrieval by embedding, label-aligned",
    "best_on_500_aligned": "retrieval: best zoo checkpoint on 500 labelled after label alignment",
}
COLORS = {
    "random_init": "#999999",
    "zoo": "#4c72b0",
    "generated": "#c44e52",
    "generated_best_of_5": "#dd8452",
    "nearest_by_embedding": "#55a868",
    "best_on_500": "#8172b3",
    "noise": "#937860",
    "average": "#da8bc3",
    "generated_aligned": "#8c0000",
    "nearest_by_embedding_aligned": "#2d6b3c",
    "best_on_500_aligned": "#4b3f80",
}


def _f(x, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _short(arch: str) -> str:
    """An architecture text without input, classes and norm details."""
    return re.sub(r", (input|classes|batch norm|activation).*", "", arch)


def _tag(arch: str) -> str:
    """A plot label: the family, and the blocks of a ResNet."""
    m = re.search(r"layers (\[[^\]]*\])", arch)
    return arch.split(":")[0] + (f" {m.group(1)}" if m else "")


def _cols(r: dict) -> list[tuple[str, str]]:
    """(step key, column title): the epochs first, then the small step counts."""
    by_step = {str(s): f"ep {e}" for e, s in r["epoch_steps"].items()}
    return [
        (str(s), by_step.get(str(s), f"{s} steps"))
        for s in sorted(r["steps"], key=lambda s: (str(s) not in by_step, s))
    ]


def _method_table(r: dict) -> list[str]:
    cols = _cols(r)
    lines = ["| method | " + " | ".join(t for _, t in cols) + " |", "|---|" + "---|" * len(cols)]
    for m, v in r["methods"].items():
        cells = []
        for s, _ in cols:
            cell = _f(v["mean"][s])
            if m in ("generated", "generated_aligned"):
                cell += f" ± {_f(v['std'][s])}" + (f" ({_f(v['min0'])}-{_f(v['max0'])})" if s == "0" else "")
            cells.append(cell)
        note = {
            "nearest_by_embedding": f" → {v.get('model_id', '')}",
            "best_on_500": f" → {v.get('model_id', '')}",
            "noise": f" (σ = {v.get('scale')} × entry std)",
            "average": f" ({v.get('num_averaged')} of {v.get('task')}"
            + (", BN recalibrated" if v.get("bn_recalibrated") else "")
            + ")",
            "generated_aligned": f" ({v.get('alignments_applied')} of {len(v['acc0'])} reordered)",
            "nearest_by_embedding_aligned": " ("
            + ("reordered" if v.get("alignment_applied") else "unchanged")
            + ")",
            "best_on_500_aligned": f" → {v.get('model_id', '')}"
            + (", reordered" if v.get("alignment_applied") else ""),
        }.get(m, "")
        n = (
            f" [n={len(v['acc0'])}, fine-tuned {len(v['curves'])}]"
            if m in ("random_init", "zoo", "generated", "generated_aligned")
            else ""
        )
        lines.append(f"| {LABELS[m]}{note}{n} | " + " | ".join(cells) + " |")
    return lines


def _losses(losses: list[dict], limit: int = 12, generator: str = "generated") -> list[str]:
    name = "generated" if generator == "generated" else "label-aligned generated"
    if not losses:
        return [f"- none: the {name} mean is at least as accurate as every baseline at every step."]
    worst = sorted(losses, key=lambda x: -x["deficit"])
    tasks = sorted({x["task"] for x in losses})
    lines = [
        f"- {len(losses)} (task, step, baseline) cells where a baseline beats the {name} mean, on "
        f"{', '.join(tasks)}; the largest:"
    ]
    for x in worst[:limit]:
        lines.append(
            f"  - {x.get('zoo', x['part'])} / {x['task']} at step {x['step']}: {LABELS[x['baseline']]} "
            f"{_f(x['baseline_acc'])} vs {name} {_f(x['generated_acc'])} (−{_f(x['deficit'])} points)"
        )
    return lines


def _sec_seen(seen: dict, cfg: dict) -> list[str]:
    """Part 1: per seen task, accuracy after 0..N fine-tuning epochs per method."""
    L: list[str] = []
    # 1. seen
    n_ep = seen["zoo_epochs"]
    first = next(iter(seen["tasks"].values()))
    L += [
        "## 1. Seen tasks (paper Table 1)",
        "",
        f"Zoo `{seen['zoo']}`: its checkpoints were trained {n_ep} epochs, so fine-tuning is reported after "
        f"{', '.join(first['epoch_steps'])} epochs (N = {n_ep}, the zoo's schedule; {first['steps_per_epoch']} Adam steps of 64 per epoch, lr "
        f"{cfg['finetune_lr']}), and after {', '.join(map(str, cfg['finetune_steps']))} steps. Test accuracy in %. "
        f"Epoch 0 averages every start (all {len(first['methods']['generated']['acc0'])} generated samples, every zoo "
        f"checkpoint of the task); later columns average the fine-tuned ones (n in brackets). Retrieval by embedding "
        "takes the zoo task whose instruction embedding is nearest, then its last-epoch checkpoint of the lowest seed; "
        f"best-on-500 picks, among every zoo checkpoint, the most accurate on {cfg['labelled_examples']} labelled "
        "training examples; best-of-5 picks among the first 5 samples the same way. Noise is added to the retrieved "
        "checkpoint; the average is over the last-epoch checkpoints of the (nearest) task.",
        "",
    ]
    for task, r in seen["tasks"].items():
        L += [f"**{task}** — {r['instruction']}", ""] + _method_table(r) + [""]
    L += ["![seen tasks](seen.png)", ""]
    return L


def _sec_unseen(un: dict) -> list[str]:
    """Part 2: head start over random init and retrieval on held-out tasks, and their tables."""
    hs = [(k, task, r["head_start"]) for k, v in un["zoos"].items() for task, r in v["tasks"].items()]
    L: list[str] = []
    # 2. unseen
    L += [
        "## 2. Unseen tasks (paper Fig. 2)",
        "",
        "Held-out tasks, never in any zoo. *Independent* zoo: the seen-task zoo (independent seeds); *related* zoo: "
        "rotations sharing initializations across tasks (the builder's `related` preset), with its own pipeline. "
        "No zoo row: the task has no checkpoints. Head start: every fine-tuning step where random init is still "
        "below 50 %.",
        "",
        "| zoo | task | step | random init | generated | gap | best retrieval | gap to it | ≥ 20 points |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, task, h in [(k, task, x) for k, task, hh in hs for x in hh["steps"]]:
        L.append(
            f"| {k} | {task} | {h['step']} | {_f(h['random_init'])} | {_f(h['generated'])} | "
            f"{_f(h['gap_to_random_init'])} | {_f(h['best_retrieval'])} ({h['best_retrieval_method']}) | "
            f"{_f(h['gap_to_best_retrieval'])} | {'yes' if h['gap_to_random_init'] >= 20 else 'no'} |"
        )
    L.append("")
    aligned = [
        (k, task, x)
        for k, v in un["zoos"].items()
        for task, r in v["tasks"].items()
        for x in (r["head_start_aligned"]["steps"] if "head_start_aligned" in r else [])
    ]
    if aligned:
        L += [
            "With label alignment (`align_labels=True`): every generated and retrieved net has its output units "
            "reordered to fit the 500 labelled training examples that best-on-500 also uses, kept only where the "
            "reordering, cross-fitted on halves of those examples, reaches McNemar's z ≥ 2 (`igpg_hf.label_alignment`). The best retrieval is now the best of the plain and the aligned ones.",
            "",
            "| zoo | task | step | random init | generated, aligned | gap | best retrieval | gap to it | ≥ 20 points |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k, task, h in aligned:
            L.append(
                f"| {k} | {task} | {h['step']} | {_f(h['random_init'])} | {_f(h['generated'])} | "
                f"{_f(h['gap_to_random_init'])} | {_f(h['best_retrieval'])} ({h['best_retrieval_method']}) | "
                f"{_f(h['gap_to_best_retrieval'])} | {'yes' if h['gap_to_random_init'] >= 20 else 'no'} |"
            )
        L.append("")
    for k, v in un["zoos"].items():
        for task, r in v["tasks"].items():
            L += [f"**{task}, {k} zoo `{v['zoo']}`** — {r['instruction']}", ""] + _method_table(r) + [""]
    L += ["![unseen tasks](unseen.png)", ""]
    return L


def _sec_cross(cross: dict) -> list[str]:
    """Part 3: generated ResNets of held-out depths, no fine-tuning."""
    L: list[str] = []
    # 3. cross-architecture
    L += [
        "## 3. Unseen architectures (paper Fig. 3)",
        "",
        f"Small ResNets on `{cross['task']}`, zoo blocks {cross['train_blocks']}, trained {cross['recipe']['epochs']} "
        f"epochs (Adam, lr {cross['recipe']['lr']}, seeds {cross['recipe']['seeds']}). The generator is conditioned on "
        f"the instruction and the architecture text only (no dataset samples); its context holds "
        f"{cross['n_positions']} positions, so longer models are generated block by block. No fine-tuning. "
        "Accuracy is given as generated (raw BatchNorm statistics) / after recomputing BatchNorm statistics on the "
        "training inputs. Trained reference: the zoo's last-epoch checkpoints for trained configs, the same recipe "
        "(same epochs, lr, first seeds) for held-out ones.",
        "",
        "| blocks | kind | params | tokens | prior blocks | random init | generated mean | generated best | trained |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cross["configs"].values():
        g = r["generated"]
        L.append(
            f"| {r['blocks']} | {r['kind']} | {r['parameters']:,} | {r['tokens']} | {r['prior_blocks']} | "
            f"{_f(r['random_init']['raw_mean'])} / {_f(r['random_init']['recalibrated_mean'])} | "
            f"{_f(g['raw_mean'])} / {_f(g['recalibrated_mean'])} | {_f(max(g['raw']))} / {_f(max(g['recalibrated']))} "
            f"| {_f(r['trained']['raw_mean'])} / {_f(r['trained']['recalibrated_mean'])} |"
        )
    L += ["", "![unseen architectures](cross_arch.png)", ""]
    return L


def _sec_fidelity(fid: dict) -> list[str]:
    """Part 4: original vs reconstructed vs generated accuracy."""
    L: list[str] = []
    # 4. fidelity
    L += [
        "## 4. Tokenizer fidelity (paper Table 3)",
        "",
        "Mean test accuracy of the original checkpoints, their VQ-VAE reconstructions (encode → decode) and generated "
        "samples for the same task and architecture. Relative L2 = ‖reconstruction − original‖ / ‖original‖; "
        "recon novelty = reconstruction error / median distance between the group's checkpoints. BatchNorm nets: "
        "raw / recalibrated.",
        "",
        "| zoo | task | architecture | ckpts | original | reconstructed | generated | loss (points) | rel. L2 | recon novelty |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in fid["rows"]:
        rec = _f(r["reconstructed"]) + (
            f" / {_f(r['reconstructed_recalibrated'])}" if r["batchnorm_recalibrated"] else ""
        )
        gen = _f(r["generated"]) + (
            f" / {_f(r['generated_recalibrated'])}" if r["batchnorm_recalibrated"] else ""
        )
        L.append(
            f"| {r['zoo']} | {r['task']} | {_short(r['architecture'])} | {r['checkpoints']} | "
            f"{_f(r['original'])} | {rec} | {gen} | {_f(r['recon_loss_points'], 2)} | {_f(r['recon_relative_l2'], 3)} "
            f"| {_f(r['recon_novelty'], 3)} |"
        )
    L += ["", "![fidelity](fidelity.png)", ""]
    return L


def _sec_novelty(nov: dict, cfg: dict) -> list[str]:
    """Part 5: copies, novelty, disagreement, and the noise-baseline curve."""
    verdict = _verdict(nov)
    L: list[str] = []
    # 5. novelty
    L += [
        "## 5. Novelty: are generated nets copies?",
        "",
        "Copy: the sampled token sequence equals a training checkpoint's. Novelty: L2 distance to the nearest "
        "training checkpoint / median pairwise distance between the checkpoints of that checkpoint's task (adjacent "
        "epochs of one seed sit near 0.016 in PROTOTYPE.md, independent seeds near 1). Disagreement: % of test inputs "
        "where the prediction differs from that nearest checkpoint's. The noise baseline (a checkpoint + Gaussian "
        f"noise of σ × each entry's std, σ in {cfg['noise_curve_scales']}) traces accuracy against novelty; a "
        "generated model's margin is its accuracy minus the curve's at its novelty.",
        "",
        "| models | n | copies | mean novelty | disagreement (%) | accuracy | margin over noise curve | above the curve |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in (
        ("seen", "seen tasks, all"),
        ("seen_copies", "seen, copies"),
        ("seen_non_copies", "seen, not copies"),
        ("seen_new_only", "seen, new-only sampling (copies excluded)"),
        ("held_out", "held-out tasks"),
    ):
        s = nov.get(key)
        if not s:
            continue
        L.append(
            f"| {label} | {s['models']} | {s['copies']} | {_f(s['mean_novelty'], 3)} | {_f(s['mean_disagreement'])} "
            f"| {_f(s['mean_accuracy'])} | {_f(s['mean_margin_over_noise'])} | {_f(s['fraction_above_noise_curve'], 2)} |"
        )
    L += [
        "",
        "Noise baseline (mean over its source checkpoints): scale → novelty / accuracy",
        "",
        "| task | " + " | ".join(f"σ={p['scale']}" for p in next(iter(nov["noise_curves"].values()))) + " |",
        "|---|" + "---|" * len(next(iter(nov["noise_curves"].values()))),
    ]
    for task, pts in nov["noise_curves"].items():
        L.append(
            f"| {task} | " + " | ".join(f"{_f(p['novelty'], 3)} / {_f(p['accuracy'])}" for p in pts) + " |"
        )
    if nov.get("adjacent_epochs_novelty"):
        L += [
            "",
            "For scale: adjacent kept epochs of one training run sit at novelty "
            + ", ".join(f"{_f(v, 3)} ({t})" for t, v in nov["adjacent_epochs_novelty"].items())
            + ".",
        ]
    L += ["", f"Verdict: {verdict}.", "", "![novelty](novelty.png)", ""]
    if nov.get("seen_new_only"):
        L[-2:-2] = [
            "New-only sampling draws several candidates per sample at a hotter setting, drops token-for-token "
            "copies of training checkpoints and keeps the ones the prior finds most likely (no labels used): "
            + _verdict_new(nov)
            + ".",
            "",
        ]
    return L


def _sec_speed(sp: dict) -> list[str]:
    """Part 6: generation, prior sampling, training, tokenizer cost by size."""
    L: list[str] = []
    # 6. speed
    g1, gn = (
        sp["generate_1"],
        next(v for k, v in sp.items() if k.startswith("generate_") and k != "generate_1"),
    )
    n = round(gn["seconds"] / gn["seconds_per_model"])
    tr = sp["train_one_model"]
    L += [
        "## 6. Speed and memory",
        "",
        f"CPU, {sp['threads']} torch thread(s); memory = {sp['memory_method']} (0: the call needed no memory beyond "
        f"what the process already held). Architecture: {sp['architecture']}.",
        "",
        "| what | seconds | peak MB |",
        "|---|---|---|",
        f"| generate 1 model (pipeline call) | {_f(g1['seconds'], 2)} | {_f(g1['peak_mb'])} |",
        f"| generate {n} models | {_f(gn['seconds'], 2)} ({_f(gn['seconds_per_model'], 3)} per model) | {_f(gn['peak_mb'])} |",
        f"| train the same model ({tr['epochs']} epochs, `train_model`) | {_f(tr['seconds'], 2)} | {_f(tr['peak_mb'])} |",
        "",
    ]
    kv1, kv0 = sp["prior_kv_cache_true"], sp["prior_kv_cache_false"]
    L += [
        f"Prior sampling ({kv1['samples']} samples × {kv1['tokens_per_model']} tokens): {_f(kv1['tokens_per_second'], 0)} "
        f"tokens/s with the KV cache, {_f(kv0['tokens_per_second'], 0)} without ({_f(sp['kv_cache_speedup'], 2)}×).",
        "",
    ]
    ratio = sp["generation_over_training"]
    L.append(
        "Generation time / training time: "
        + ", ".join(f"{k.replace('_', ' ')} {_f(v, 4)}" for k, v in ratio.items())
        + (
            f"; the zoo build took {_f(sp['zoo_build']['cpu_seconds_per_model'])} CPU-seconds per model "
            f"({sp['zoo_build']['runs']} runs on {sp['zoo_build']['workers']} workers)."
            if "zoo_build" in sp
            else "."
        )
    )
    L += [
        "",
        "Tokenize + decode (`vqvae.encode` + `vqvae.decode`) against size (the trained tokenizer; entries it never saw "
        "fall back to role/global statistics; positions fold modulo its max_positions):",
        "",
        "| parameters | tokens | encode s | decode s | peak MB (encode / decode) | architecture |",
        "|---|---|---|---|---|---|",
    ]
    for r in sp["tokenizer_by_size"]:
        L.append(
            f"| {r['parameters']:,} | {r['tokens']:,} | {_f(r['encode_seconds'], 3)} | {_f(r['decode_seconds'], 3)} | "
            f"{_f(r['encode_peak_mb'])} / {_f(r['decode_peak_mb'])} | {_short(r['architecture'])} |"
        )
    L += ["", "![speed](speed.png)", ""]
    return L


def _verdict(nov: dict) -> str:
    if nov["non_copies_beat_noise_curve"] is None:
        return "no generated model on a seen task is new: every one is a token-for-token copy of a training checkpoint"
    return (
        "the non-copies **are** more accurate than the noise baseline at their novelty"
        if nov["non_copies_beat_noise_curve"]
        else "the non-copies are **not** more accurate than the noise baseline at their novelty"
    )


def _verdict_new(nov: dict) -> str:
    s = nov["seen_new_only"]
    return (
        f"{s['models']} models at mean novelty {_f(s['mean_novelty'], 3)} and accuracy {_f(s['mean_accuracy'])}, "
        f"{_f(s['mean_margin_over_noise'])} points over the noise curve on average, "
        + ("**above** it" if nov["new_only_beat_noise_curve"] else "**not above** it")
    )


def _headline(R: dict) -> list[str]:
    """The targets, met or not, and where the generator loses to a baseline."""
    L = ["## Headline", ""]
    if "seen" in R:
        seen = R["seen"]
        L.append(
            f"- **Seen tasks, no fine-tuning:** generated mean / zoo mean = {_f(seen['mean_generated_over_zoo'], 3)} "
            "(target ≥ 0.95: "
            + ("met" if seen["meets_95_percent_of_zoo"] else "**NOT met**")
            + "); per task "
            + ", ".join(f"{k} {_f(v, 3)}" for k, v in seen["generated_over_zoo"].items())
            + "."
        )
    for k, v in R.get("unseen", {}).get("zoos", {}).items():
        for task, r in v["tasks"].items():
            h = r["head_start"]
            L.append(
                f"- **Unseen {task} ({k} zoo), after {h['step']} fine-tuning steps** (the largest gap among steps "
                f"{', '.join(str(x['step']) for x in h['steps'])}, where random init is below 50 %): generated "
                f"{_f(h['generated'])} vs random init {_f(h['random_init'])} ({_f(h['gap_to_random_init'])} points; "
                "≥ 20 target "
                + ("met" if h["meets_20_points"] else "**NOT met**")
                + (
                    ")"
                    if h["random_init_below_50"]
                    else "; random init was already ≥ 50 % at the first step)"
                )
                + f"; best retrieval ({LABELS[h['best_retrieval_method']]}) {_f(h['best_retrieval'])}, gap "
                f"{_f(h['gap_to_best_retrieval'])} points."
            )
            if "head_start_aligned" in r:
                a = r["head_start_aligned"]
                L.append(
                    f"  - with label alignment, after {a['step']} steps: generated {_f(a['generated'])} vs random "
                    f"init {_f(a['random_init'])} ({_f(a['gap_to_random_init'])} points; ≥ 20 target "
                    + ("met" if a["meets_20_points"] else "**NOT met**")
                    + f"); best retrieval, aligned or not "
                    f"({LABELS[a['best_retrieval_method']]}) {_f(a['best_retrieval'])}, gap "
                    f"{_f(a['gap_to_best_retrieval'])} points."
                )
    if "cross_arch" in R:
        held = [r for r in R["cross_arch"]["configs"].values() if r["kind"] == "held_out"]
        L.append(
            "- **Unseen architectures, no fine-tuning (BN recalibrated):** "
            + "; ".join(
                f"{r['blocks']}: generated {_f(r['generated']['recalibrated_mean'])} (best {_f(max(r['generated']['recalibrated']))}) "
                f"vs random init {_f(r['random_init']['recalibrated_mean'])} and trained {_f(r['trained']['recalibrated_mean'])}"
                for r in held
            )
            + "."
        )
    if "novelty" in R:
        nov = R["novelty"]
        ns = nov["seen_non_copies"]
        L.append(
            f"- **Novelty:** {nov['seen']['copies']} of {nov['seen']['models']} generated models on seen tasks are "
            f"token-for-token copies of training checkpoints; {_verdict(nov)} (non-copies: {ns['models']}, mean "
            f"novelty {_f(ns['mean_novelty'], 3)}, mean margin over the noise curve {_f(ns['mean_margin_over_noise'])} "
            "points)."
            + (
                f" New-only sampling (copies excluded): {_verdict_new(nov)}."
                if nov.get("seen_new_only")
                else ""
            )
        )
    if "seen" in R or "unseen" in R:
        L += ["", "### Where the generator loses to a baseline", ""]
        L += _losses(R.get("seen", {}).get("losses", []) + R.get("unseen", {}).get("losses", []))
        if R.get("unseen", {}).get("losses_aligned") is not None and "all_meet_20_points_aligned" in R.get(
            "unseen", {}
        ):
            L += [
                "",
                "Label-aligned generated nets on held-out tasks, against every baseline (aligned ones included):",
                "",
            ]
            L += _losses(R["unseen"]["losses_aligned"], generator="generated_aligned")
    return L + [""]


def write_report(results: dict, path: str | os.PathLike) -> Path:
    """Render ``report.md``: reproduce command, headline checks, one section per part run, stage timings."""
    R, meta, t, cfg = results, results["meta"], results["timings"], results["config"]
    extra = f" --pipeline {meta['pipeline']} --corpus {meta['corpus']}" if meta.get("pipeline") else ""
    L = [
        f"# IGPG benchmark (preset `{meta['preset']}`)",
        "",
        "Reproduce:",
        "",
        "```bash",
        f"igpg-hf bench --preset {meta['preset']} --out DIR{extra}",
        "```",
        "",
        f"This run: {_f(t['total_seconds'] / 60)} min in all on {meta['cpu_count']} CPU cores (torch threads "
        f"{meta['torch_threads']}, load average at the end {', '.join(_f(x, 2) for x in meta['load_average_at_end'])}; "
        "zoos, pipelines and parts reused from an earlier run in the same folder count about 0 s here). Every number "
        "below comes from this run's `results.json`.",
        "",
    ]
    L += _headline(R)
    sections = {
        "seen": lambda: _sec_seen(R["seen"], cfg),
        "unseen": lambda: _sec_unseen(R["unseen"]),
        "cross_arch": lambda: _sec_cross(R["cross_arch"]),
        "fidelity": lambda: _sec_fidelity(R["fidelity"]),
        "novelty": lambda: _sec_novelty(R["novelty"], cfg),
        "speed": lambda: _sec_speed(R["speed"]),
    }
    for name, fn in sections.items():
        if name in R:
            L += fn()
    L += ["## Stage timings (seconds)", "", "| stage | seconds |", "|---|---|"]
    L += [f"| {k.removesuffix('_seconds')} | {_f(v)} |" for k, v in t.items()]
    if results.get("zoo_builds"):
        L += [
            "",
            "Zoo builds (the invocation that trained most of each zoo; a resumed build trains only what is "
            "missing): "
            + "; ".join(
                f"{k}: {b['runs_trained']} runs in {_f(float(b['seconds']))} s on "
                f"{b.get('num_workers', '?')} workers"
                for k, b in results["zoo_builds"].items()
            )
            + ".",
        ]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(L) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------ plots
def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _curves(tables: list[tuple[str, dict]], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(3.6 * len(tables) + 1, 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], tables, strict=True):
        xs = r["steps"]
        for m, v in r["methods"].items():
            ys = [v["mean"][str(s)] for s in xs]
            ax.plot(
                xs,
                ys,
                marker="o",
                ms=3,
                color=COLORS[m],
                label=LABELS[m],
                ls="--" if m.endswith("_aligned") else "-",
                lw=2 if m.startswith("generated") and m != "generated_best_of_5" else 1,
            )
            if m == "generated":
                sd = [v["std"][str(s)] for s in xs]
                ax.fill_between(
                    xs,
                    [y - d for y, d in zip(ys, sd, strict=True)],
                    [y + d for y, d in zip(ys, sd, strict=True)],
                    color=COLORS[m],
                    alpha=0.15,
                )
        ax.set_xscale("symlog", linthresh=10)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _plot_cross(results: dict, out: Path) -> Path:
    """Bars per block config: random init, generated, trained (BN recalibrated); dots: raw."""
    import matplotlib.pyplot as plt

    rows = list(results["cross_arch"]["configs"].values())
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2, 3.8))
    for i, r in enumerate(rows):
        for j, (key, c) in enumerate(
            (("random_init", "#999999"), ("generated", "#c44e52"), ("trained", "#4c72b0"))
        ):
            ax.bar(
                i + (j - 1) * 0.27,
                r[key]["recalibrated_mean"],
                0.25,
                color=c,
                label=key.replace("_", " ") if i == 0 else None,
            )
            ax.scatter(
                [i + (j - 1) * 0.27] * len(r[key]["raw"]),
                r[key]["raw"],
                color="k",
                s=8,
                zorder=3,
                label="raw BN statistics" if i == 0 and j == 0 else None,
            )
    ax.set_xticks(range(len(rows)), [f"{r['blocks']}\n{r['kind']}" for r in rows], fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Unseen architectures: bars after BN recalibration, dots raw", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out / "cross_arch.png")


def _plot_fidelity(results: dict, out: Path) -> Path:
    """Original, reconstructed and generated accuracy per zoo group."""
    import matplotlib.pyplot as plt

    rows = results["fidelity"]["rows"]
    fig, ax = plt.subplots(figsize=(0.7 * len(rows) + 2, 3.8))
    for j, (key, c) in enumerate(
        (("original", "#4c72b0"), ("reconstructed", "#55a868"), ("generated", "#c44e52"))
    ):
        ax.bar(
            [i + (j - 1) * 0.27 for i in range(len(rows))], [r[key] for r in rows], 0.25, color=c, label=key
        )
    ax.set_xticks(
        range(len(rows)),
        [f"{r['zoo']}\n{r['task']}\n{_tag(r['architecture'])}" for r in rows],
        fontsize=5,
        rotation=90,
    )
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    return _save(fig, out / "fidelity.png")


def _plot_novelty(results: dict, out: Path) -> Path:
    """Accuracy vs novelty: the noise baseline's curve and the generated models per seen task."""
    import matplotlib.pyplot as plt

    nov = results["novelty"]
    tasks = list(nov["noise_curves"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks) + 1, 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        pts = sorted(nov["noise_curves"][task], key=lambda p: p["novelty"])
        ax.plot(
            [p["novelty"] for p in pts],
            [p["accuracy"] for p in pts],
            "-o",
            color="#937860",
            ms=3,
            label="checkpoint + noise",
        )
        for copy, mk in ((True, "x"), (False, "o")):
            ms = [
                m
                for m in nov["models"]
                if m["task"] == task and m["copy"] == copy and not m["held_out"] and not m.get("new_only")
            ]
            ax.scatter(
                [m["novelty"] for m in ms],
                [m["accuracy"] for m in ms],
                marker=mk,
                color="#c44e52",
                s=18,
                label="generated, copy" if copy else "generated, not a copy",
                zorder=3,
            )
        ms = [m for m in nov["models"] if m["task"] == task and m.get("new_only")]
        if ms:
            ax.scatter(
                [m["novelty"] for m in ms],
                [m["accuracy"] for m in ms],
                marker="^",
                color="#8172b2",
                s=16,
                label="generated, copies excluded",
                zorder=3,
            )
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("novelty (distance to nearest / typical)")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=6)
    return _save(fig, out / "novelty.png")


def _plot_speed(results: dict, out: Path) -> Path:
    """Tokenize + decode time and peak memory against parameters, log axes."""
    import matplotlib.pyplot as plt

    sizes = results["speed"]["tokenizer_by_size"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.4))
    p = [r["parameters"] for r in sizes]
    a1.loglog(p, [r["encode_seconds"] for r in sizes], "-o", label="encode")
    a1.loglog(p, [r["decode_seconds"] for r in sizes], "-o", label="decode")
    a1.set_xlabel("parameters")
    a1.set_ylabel("seconds")
    a1.legend(fontsize=7)
    a2.loglog(p, [max(r["peak_mb"], 0.1) for r in sizes], "-o", color="#8172b3")
    a2.set_xlabel("parameters")
    a2.set_ylabel("peak memory (MB)")
    fig.suptitle("Tokenize + decode vs model size", fontsize=10)
    return _save(fig, out / "speed.png")


def plot_all(results: dict, out_dir: str | os.PathLike) -> list[Path]:
    """seen.png, unseen.png, cross_arch.png, fidelity.png, novelty.png and speed.png (those of the parts run)."""
    import matplotlib

    matplotlib.use("Agg")
    out, paths = Path(out_dir), []
    if "seen" in results:
        paths.append(
            _curves(
                list(results["seen"]["tasks"].items()),
                out / "seen.png",
                "Seen tasks: accuracy vs fine-tuning",
            )
        )
    if "unseen" in results:
        un = [(f"{t} ({k})", r) for k, v in results["unseen"]["zoos"].items() for t, r in v["tasks"].items()]
        paths.append(_curves(un, out / "unseen.png", "Unseen tasks: accuracy vs fine-tuning"))
    for part, fn in (
        ("cross_arch", _plot_cross),
        ("fidelity", _plot_fidelity),
        ("novelty", _plot_novelty),
        ("speed", _plot_speed),
    ):
        if part in results:
            paths.append(fn(results, out))
    return paths
