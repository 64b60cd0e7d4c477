"""One last-epoch checkpoint per trained depth of the cross_arch zoo through that run's VQ-VAE: test accuracy of the
original and the reconstruction (BatchNorm recalibrated alike) and relative L2 error; writes recon.json.

    python reconstruction.py B   # B: the `igpg-hf bench --parts cross_arch --out B` folder
"""

import json
import sys

import torch

from igpg_hf.corpus import WeightCorpus
from igpg_hf.evaluation.metrics import evaluate_recalibrated
from igpg_hf.modeling_vqvae import IGPGVQVAEModel


def main(bench: str) -> dict:
    torch.set_num_threads(1)
    vq = IGPGVQVAEModel.from_pretrained(f"{bench}/pipeline_resnet/vqvae/final").eval()
    pick = {}
    for c in WeightCorpus.load(f"{bench}/zoo_resnet"):
        if c.metadata.epoch == 15:
            pick.setdefault(str(c.arch().to_dict()["blocks"]), c)
    out = {}
    for b in ("[2, 2, 2]", "[3, 4, 3]", "[4, 4, 4]"):
        c = pick[b]
        sd = c.state_dict()
        rec = vq.decode(vq.encode(sd, c.layout), c.layout, fill=sd)
        orig, recon = evaluate_recalibrated(c.arch(), [sd, rec], "digits")
        floats = [k for k in sd if sd[k].is_floating_point()]
        err = sum(((sd[k] - rec[k]) ** 2).sum() for k in floats) / sum((sd[k] ** 2).sum() for k in floats)
        out[b] = {"original": orig, "reconstructed": recon, "relative_l2": float(err) ** 0.5}
        print(b, out[b], flush=True)
    with open("recon.json", "w") as f:
        json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main(sys.argv[1])
