"""Quickstart: instruction -> a working CNN, in a few lines (run `igpg-hf demo` first to train a pipeline).

python examples/quickstart.py [PIPELINE_DIR]
"""

import sys

from igpg_hf import IGPGPipeline, get_architecture
from igpg_hf.evaluation.metrics import evaluate_state_dicts

pipeline_dir = sys.argv[1] if len(sys.argv) > 1 else "demo_out/pipeline"

pipe = IGPGPipeline.from_pretrained(pipeline_dir)
out = pipe(
    "Classify handwritten digits 0-9 from 28x28 grayscale images",
    architecture="tiny_cnn",  # a preset, an ArchSpec, or a spec dict
    dataset="mnist",  # optional: a few labelled samples (a task name or an (x, y) pair)
    num_samples=5,
    seed=0,
    top_p=0.9,  # nucleus sampling, as in the demo
    return_modules=True,
)
net = out.modules[0]  # a torch.nn.Module with the generated weights
print(
    "test accuracy of 5 samples (%):",
    [round(a, 1) for a in evaluate_state_dicts(get_architecture("tiny_cnn"), out.state_dicts, "mnist")],
)
print("token-for-token copies of a training checkpoint:", out.is_copy)
print(f"generated in {out.seconds:.2f} s")

# only weights that are not copies: draw 8 candidates per sample, drop copies, keep the most likely
new = pipe(
    "Classify handwritten digits 0-9 from 28x28 grayscale images",
    architecture="tiny_cnn",
    dataset="mnist",
    num_samples=5,
    seed=0,
    temperature=1.5,
    top_k=3,
    candidates_per_sample=8,
    exclude_copies=True,
)
print(
    "new-only samples (%):",
    [round(a, 1) for a in evaluate_state_dicts(get_architecture("tiny_cnn"), new.state_dicts, "mnist")],
)

# your own wording: condition on the nearest known task's instruction, and keep the candidates (of it and of the
# three next nearest known tasks, with and without the samples) most accurate on the labelled samples
worded = pipe(
    "Can you build a network that recognises digits that people wrote on paper?",
    architecture="tiny_cnn",
    dataset="mnist",
    num_samples=2,
    seed=0,
    top_p=0.9,
    match_known_task=True,
    guidance_scale=1.25,
    select_by="support_accuracy",
    candidate_tasks=3,
)
print(
    "nearest known tasks:", worded.conditions.nearest_tasks, "drawn under:", worded.conditioning_instructions
)
print(
    "reworded, kept by accuracy on the samples (%):",
    [round(a, 1) for a in evaluate_state_dicts(get_architecture("tiny_cnn"), worded.state_dicts, "mnist")],
    "on the samples:",
    worded.support_accuracy,
)
