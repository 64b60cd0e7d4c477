"""Reconstruction of cross_arch zoo checkpoints through the run's VQ-VAE (aligned as the pipeline trained)."""
import json, torch
torch.set_num_threads(1)
from igpg_hf.corpus import WeightCorpus
from igpg_hf.modeling_vqvae import IGPGVQVAEModel
from igpg_hf.evaluation.metrics import evaluate_recalibrated

vq = IGPGVQVAEModel.from_pretrained("/work/cache/ca_run1/pipeline_resnet/vqvae/final").eval()
cks = [c for c in WeightCorpus.load("/work/cache/ca_run1/zoo_resnet") if c.metadata.epoch == 15]
pick = {}
for c in cks:
    b = str(c.arch().to_dict()["blocks"])
    pick.setdefault(b, c)
out = {}
for b in ("[2, 2, 2]", "[3, 4, 3]", "[4, 4, 4]"):
    c = pick[b]
    spec = c.arch()
    sd = c.state_dict()
    toks = vq.encode(sd, c.layout)
    rec = vq.decode(toks, c.layout, fill=sd)
    o, r = evaluate_recalibrated(spec, [sd, rec], "digits")
    err = sum(((sd[k].float() - rec[k].float()) ** 2).sum() for k in sd if sd[k].is_floating_point()) / sum((sd[k].float() ** 2).sum() for k in sd if sd[k].is_floating_point())
    out[b] = {"original": o, "reconstructed": r, "relative_l2": float(err) ** 0.5}
    print(b, out[b], flush=True)
json.dump(out, open("/work/cache/ca_run1/recon.json", "w"), indent=1)
