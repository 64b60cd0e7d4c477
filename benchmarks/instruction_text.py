"""How well instruction text alone identifies the default zoo's tasks, and how well the OOD flag separates.

    python benchmarks/instruction_text.py [--out benchmarks/results/instructions_text.json]

Text only (no zoo, no prior): every training, calibration and evaluation wording of the 36 trainable tasks
(`igpg_hf.zoo.instructions`) and the unrelated instructions go through all-MiniLM-L6-v2 once (token states; their
normalized mean is the pipeline's embedding). Task identification of each evaluation wording: the nearest
training wording among tasks of the same default architecture is of the right task. Compared: the mean embedding
(nearest of 48 training wordings per task, and of all of them), the best linear map of the mean embedding trained
to classify tasks, and `TextAttentionPool` trained as `train_prior` trains it (nearest of 48 per task, and by its
task prototypes). Then the out-of-distribution threshold calibrated as `train_prior` does (32 known wordings per
task) and its flag rates on the evaluation split. About 15 minutes on 2 busy cores, mostly MiniLM.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from igpg_hf.conditioning import TextAttentionPool, encode_text_states, load_text_encoder, pad_text_states
from igpg_hf.conditioning.coverage import calibrate_threshold
from igpg_hf.training.args import PriorTrainingArgs
from igpg_hf.training.prior import _sample_wordings, _train_text_pool
from igpg_hf.zoo import architecture_for_task, list_tasks
from igpg_hf.zoo.instructions import task_wordings, unrelated_instructions


def identify(queries, q_tasks, keys, k_tasks, arch) -> float:
    sims, ok = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T, 0
    for i, t in enumerate(q_tasks):
        cand = [j for j, u in enumerate(k_tasks) if arch[u] == arch[t]]
        ok += k_tasks[cand[int(sims[i, cand].argmax())]] == t
    return ok / len(q_tasks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/instructions_text.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    tasks = list_tasks(held_out=False)
    arch = {t: architecture_for_task(t).to_json() for t in tasks}
    words = {
        (t, s): [w.text for w in task_wordings(t, s)]
        for t in tasks
        for s in ("train", "calibration", "evaluation")
    }
    unrel = {s: list(unrelated_instructions(s)) for s in ("calibration", "evaluation")}
    texts = sorted({w for v in words.values() for w in v} | {u for v in unrel.values() for u in v})
    enc, tok = load_text_encoder()
    states = dict(zip(texts, encode_text_states(texts, enc, tok), strict=True))
    mean = {w: F.normalize(s.mean(0), dim=-1) for w, s in states.items()}
    sub = {t: list(_sample_wordings(tuple(words[(t, "train")]), 48, t)) for t in tasks}

    def stack(ws, table):
        return torch.stack([table[w] for w in ws])

    ev = [(w, t) for t in tasks for w in words[(t, "evaluation")]]
    q_t = [t for _, t in ev]
    keys48 = [(w, t) for t in tasks for w in sub[t]]
    keys_all = [(w, t) for t in tasks for w in words[(t, "train")]]
    res = {"num_evaluation_wordings": len(ev), "num_training_wordings": len(keys_all)}
    res["mean_embedding_nearest_of_48"] = identify(
        stack([w for w, _ in ev], mean),
        q_t,
        stack([w for w, _ in keys48], mean),
        [t for _, t in keys48],
        arch,
    )
    res["mean_embedding_nearest_of_all"] = identify(
        stack([w for w, _ in ev], mean),
        q_t,
        stack([w for w, _ in keys_all], mean),
        [t for _, t in keys_all],
        arch,
    )
    # the best linear map of the mean embedding: task classification on all training wordings
    ti = {t: i for i, t in enumerate(tasks)}
    mask = torch.tensor([[arch[a] == arch[b] for b in tasks] for a in tasks])
    X, y = stack([w for w, _ in keys_all], mean), torch.tensor([ti[t] for _, t in keys_all])
    lin = torch.nn.Linear(384, len(tasks))
    opt = torch.optim.AdamW(lin.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(600):
        b = torch.randint(len(y), (256,))
        loss = F.cross_entropy(lin(X[b]).masked_fill(~mask[y[b]], -1e9), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        yq = torch.tensor([ti[t] for t in q_t])
        pred = lin(stack([w for w, _ in ev], mean)).masked_fill(~mask[yq], -1e9).argmax(1)
    res["mean_embedding_linear_map"] = float((pred == yq).float().mean())
    # TextAttentionPool trained as train_prior trains it (on the 48-per-task sample), then frozen
    model = SimpleNamespace(text_pool=TextAttentionPool(384, 4))
    seqs = [SimpleNamespace(task=t, instructions=tuple(sub[t])) for t in tasks]
    _train_text_pool(model, seqs, {w: s.half() for w, s in states.items()}, PriorTrainingArgs())
    with torch.no_grad():

        def pooled(ws):
            return torch.cat(
                [
                    model.text_pool(*pad_text_states([states[w] for w in ws[i : i + 256]]))
                    for i in range(0, len(ws), 256)
                ]
            )

        res["text_attention_pool_nearest_of_48"] = identify(
            pooled([w for w, _ in ev]), q_t, pooled([w for w, _ in keys48]), [t for _, t in keys48], arch
        )
    # out-of-distribution: 32 known wordings per task, calibration split -> threshold, evaluation split -> rates
    known = torch.stack(
        [mean[w] for t in tasks for w in _sample_wordings(tuple(words[(t, "train")]), 32, f"known/{t}")]
    )

    def best(ws):
        return (stack(ws, mean) @ known.T).max(1).values.tolist()

    thr, calib = calibrate_threshold(
        best([w for t in tasks for w in words[(t, "calibration")]]), best(unrel["calibration"])
    )
    ev_in, ev_out = best([w for w, _ in ev]), best(unrel["evaluation"])
    res["ood"] = {
        "threshold": thr,
        "calibration": calib,
        "evaluation_heldout_flag_rate": sum(s < thr for s in ev_in) / len(ev_in),
        "evaluation_unrelated_flag_rate": sum(s < thr for s in ev_out) / len(ev_out),
        "evaluation_unrelated_similarity": dict(zip(unrel["evaluation"], ev_out, strict=True)),
    }
    res["seconds"] = time.perf_counter() - t0
    res["load_average"] = list(__import__("os").getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "ood"}, indent=2))
    print({k: v for k, v in res["ood"].items() if "similarity" not in k})


if __name__ == "__main__":
    random.seed(0)
    main()
