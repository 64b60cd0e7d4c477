"""Generation cost against model size (issue 15): sample + decode ResNets of growing width end to end.

A demo-preset prior with structure-aware positions and the demo VQ-VAE (random weights: the cost of sampling and
decoding does not depend on what they learned), one torch thread, one sample, top-p 0.9. Prints one JSON row per
width (parameters, tokens, seconds, tokens/s, peak memory above the start) and writes them all to ``--out``.

    python benchmarks/speed_25m.py --widths 16,48 --out speed_by_size.json
    python benchmarks/speed_25m.py --widths 156   # resnet20 at width 156: 25.7 M parameters, ~1.6 M tokens
    python benchmarks/speed_25m.py --widths 2,8,16,48,156 --block-overlap 0 --out B/speed_by_size.json

``--block-overlap 0``: blocks share no tokens, so the decode loop samples them side by side (parallel blocks);
with the presets' overlap of 64 they go one by one.
"""

from __future__ import annotations

import argparse
import json

import torch

from igpg_hf import IGPGPriorConfig, IGPGPriorModel, IGPGVQVAEConfig, IGPGVQVAEModel, WeightLayout
from igpg_hf.evaluation.speed_measures import generation_cost_by_size
from igpg_hf.files import atomic_write_json
from igpg_hf.sampling import SamplingConfig
from igpg_hf.zoo import get_architecture


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--widths", default="16,48", help="resnet20 widths, comma-separated (156: 25.7 M parameters)"
    )
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--prior-preset", default="demo", help="IGPGPriorConfig preset (sizes of the prior)")
    ap.add_argument(
        "--block-overlap",
        type=int,
        default=None,
        help="tokens of context from the previous block (default 64)",
    )
    ap.add_argument(
        "--n-positions",
        type=int,
        default=None,
        help="the prior's context (default: the preset's; small: 1024)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    archs = []
    for w in (int(x) for x in args.widths.split(",")):
        spec = get_architecture("resnet20").to_dict()
        spec["width"] = w
        archs.append(spec)
    torch.manual_seed(0)
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("demo", position_mode="layer")).eval()
    largest = WeightLayout.from_module(get_architecture(archs[-1]).build())
    vq.fit_normalization([(largest, torch.randn(largest.num_float) * 0.05)])
    prior = IGPGPriorModel(
        IGPGPriorConfig.from_preset(
            args.prior_preset,
            **({"n_positions": args.n_positions} if args.n_positions else {}),
            **({"block_overlap": args.block_overlap} if args.block_overlap is not None else {}),
            vocab_size=vq.config.vocab_size,
            tokens_per_chunk=vq.config.tokens_per_chunk,
            chunk_size=vq.config.chunk_size,
            chunk_mode=vq.config.chunk_mode,
        )
    ).eval()
    rows = generation_cost_by_size(prior, vq, archs, 1, SamplingConfig(top_p=0.9))
    for r in rows:
        r.update(
            prior_preset=args.prior_preset,
            n_positions=prior.config.n_positions,
            block_overlap=prior.config.block_overlap,
        )
    for r in rows:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    if args.out:
        atomic_write_json(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
