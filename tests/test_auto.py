"""transformers' Auto classes know the IGPG models after ``import igpg_hf``, which stays free of torch/transformers."""

import json
import os
import subprocess
import sys

import pytest
import torch

from igpg_hf import IGPGPriorConfig, IGPGPriorModel, IGPGVQVAEConfig, IGPGVQVAEModel


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    torch.manual_seed(0)
    IGPGPriorModel(IGPGPriorConfig.from_preset("tiny", vocab_size=64)).save_pretrained(root / "prior")
    IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny")).save_pretrained(root / "vqvae")
    return root


def test_auto_classes_in_this_process(saved):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    assert isinstance(AutoConfig.from_pretrained(saved / "prior"), IGPGPriorConfig)
    assert isinstance(AutoModelForCausalLM.from_pretrained(saved / "prior"), IGPGPriorModel)
    assert isinstance(AutoModel.from_pretrained(saved / "prior"), IGPGPriorModel)
    assert isinstance(AutoModel.from_pretrained(saved / "vqvae"), IGPGVQVAEModel)
    assert isinstance(AutoModel.from_config(IGPGVQVAEConfig.from_preset("tiny")), IGPGVQVAEModel)


# each line runs in a fresh interpreter: the registration must work whichever is imported first
FRESH = r"""
import json, sys
{first}
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
result = {{
    "prior": type(AutoModelForCausalLM.from_pretrained(sys.argv[1] + "/prior")).__name__,
    "vqvae": type(AutoModel.from_pretrained(sys.argv[1] + "/vqvae")).__name__,
    "config": type(AutoConfig.for_model("igpg_prior")).__name__,
    "eager": eager,
}}
print(json.dumps(result))
"""


@pytest.mark.parametrize(
    "first",
    [
        # igpg_hf first: importing it must not import torch, transformers or diffusers
        "import igpg_hf\neager = sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules)",
        # transformers (and a GPT-2 model, whose import pulls in the Auto modules half-way) first
        "import transformers.models.gpt2.modeling_gpt2\nimport igpg_hf\neager = []",
    ],
    ids=["igpg_hf-first", "transformers-first"],
)
@pytest.mark.slow  # two fresh interpreters importing transformers: CI runs them
def test_auto_classes_in_a_fresh_process(saved, first):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", FRESH.format(first=first), str(saved)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {
        "prior": "IGPGPriorModel",
        "vqvae": "IGPGVQVAEModel",
        "config": "IGPGPriorConfig",
        "eager": [],
    }
    assert "could not register" not in proc.stderr
