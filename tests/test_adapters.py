"""Issue 11: LoRA adapters as data, as a zoo, and out of the pipeline as folders peft loads."""

from __future__ import annotations

import json
import warnings

import datasets
import pytest
import torch
from peft import LoraConfig, PeftModel

from igpg_hf.adapters import (
    AdapterSpec,
    adapter_accuracy,
    load_adapter,
    load_base_model,
    save_adapter,
    save_base_model,
    state_dict_sha256,
)
from igpg_hf.weights import WeightLayout
from igpg_hf.weights.lora import balance_lora_factors, balance_lora_vector, lora_pairs
from igpg_hf.zoo import get_architecture

TINY = get_architecture("tiny_cnn")
TARGETS = dict(target_modules=["features.conv2", "head.fc1"], modules_to_save=["head.fc2"])


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_cache")
    )


def _base(tmp_path, seed=0):
    torch.manual_seed(seed)
    return save_base_model(TINY.build(), tmp_path / f"base{seed}", TINY)


def _random_adapter(spec: AdapterSpec, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {e.name: 0.3 * torch.randn(e.shape, generator=g) for e in spec.layout.entries}


def _product(sd, a, b):
    r = sd[a].shape[0]
    return sd[b].reshape(-1, r).double() @ sd[a].reshape(r, -1).double()


def test_balanced_factors_keep_the_update_and_remove_the_gauge():
    g = torch.Generator().manual_seed(0)
    sd = {
        "m.conv.lora_A.weight": torch.randn(3, 4, 5, 5, generator=g),
        "m.conv.lora_B.weight": torch.randn(6, 3, 1, 1, generator=g),
        "m.fc.lora_A.weight": torch.randn(3, 20, generator=g),
        "m.fc.lora_B.weight": torch.randn(8, 3, generator=g),
        "m.head.weight": torch.randn(2, 8, generator=g),
    }
    pairs = lora_pairs(list(sd))
    assert pairs == [
        ("m.conv.lora_A.weight", "m.conv.lora_B.weight"),
        ("m.fc.lora_A.weight", "m.fc.lora_B.weight"),
    ]
    bal = balance_lora_factors(sd)
    assert torch.equal(bal["m.head.weight"], sd["m.head.weight"])  # not a factor: untouched
    for a, b in pairs:
        torch.testing.assert_close(_product(bal, a, b), _product(sd, a, b), rtol=1e-5, atol=1e-5)
        r = sd[a].shape[0]
        torch.testing.assert_close(bal[a].reshape(r, -1).norm(dim=1), bal[b].reshape(-1, r).norm(dim=0))
    # (B M, M^-1 A) is the same update: the balanced form does not see M
    m = torch.randn(3, 3, generator=g) + 3 * torch.eye(3)
    moved = dict(sd, **{"m.fc.lora_B.weight": sd["m.fc.lora_B.weight"] @ m})
    moved["m.fc.lora_A.weight"] = torch.linalg.solve(m, sd["m.fc.lora_A.weight"])
    torch.testing.assert_close(
        balance_lora_factors(moved)["m.fc.lora_A.weight"], bal["m.fc.lora_A.weight"], atol=1e-4, rtol=1e-4
    )
    layout = WeightLayout.from_state_dict(sd)
    assert torch.equal(balance_lora_vector(layout.vectorize(sd), layout), layout.vectorize(bal))


def test_base_identity_is_the_content(tmp_path):
    base = _base(tmp_path)
    assert base.identity == state_dict_sha256(base.module) and base.identity.startswith("sha256:")
    (tmp_path / "base0").rename(tmp_path / "moved")
    again = load_base_model(tmp_path / "moved")
    assert again.identity == base.identity and again.arch_spec == TINY
    assert _base(tmp_path, seed=1).identity != base.identity
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "moved" / "model.safetensors"))
    sd["head.fc2.bias"][0] += 1.0
    save_file(sd, str(tmp_path / "moved" / "model.safetensors"))
    with pytest.raises(ValueError, match="changed after it was saved"):
        load_base_model(tmp_path / "moved")


def test_adapter_folder_loads_with_peft_without_missing_or_unexpected_keys(tmp_path):
    base = _base(tmp_path)
    spec = AdapterSpec.from_base(base, LoraConfig(r=2, lora_alpha=4, **TARGETS))
    assert spec.base_model == base.identity and spec.r == 2
    assert [e.name for e in spec.layout.entries] == sorted(e.name for e in spec.layout.entries)
    assert "rank 2" in spec.text() and "head.fc2" in spec.text()
    sd = _random_adapter(spec)
    folder = save_adapter(tmp_path / "adapter", sd, spec, {"task": "mnist"})
    assert AdapterSpec.from_pretrained(folder) == spec
    assert AdapterSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(load_base_model(tmp_path / "base0").module, str(folder))
    assert not [w for w in caught if "missing" in str(w.message) or "unexpected" in str(w.message).lower()]
    check = peft_model.load_adapter(str(folder), adapter_name="again")
    assert check.missing_keys == [] and check.unexpected_keys == []
    x = torch.randn(7, 1, 28, 28)
    ours = load_adapter(base, sd, spec)
    torch.testing.assert_close(peft_model.eval()(x), ours(x))
    assert not torch.allclose(ours(x), base.module(x))  # the adapter changes the net
    with pytest.raises(ValueError, match="missing keys"):
        save_adapter(tmp_path / "bad", {k: v for k, v in list(sd.items())[1:]}, spec)
    other = _base(tmp_path, seed=1)
    with pytest.raises(ValueError, match="adapter is for base"):
        load_adapter(other, sd, spec)


# ------------------------------------------------------------------------------ zoo, pipeline, CLI
@pytest.fixture(scope="module")
def lora_zoo(tmp_path_factory):
    """The ``lora_tiny`` zoo with one task: a tiny-CNN base and adapters of ranks 1 and 2."""
    from igpg_hf.training.zoo_builder import ZooConfig, build_zoo

    out = tmp_path_factory.mktemp("lora_zoo")
    config = ZooConfig.from_preset("lora_tiny", tasks=["mnist_rot90"])
    corpus = build_zoo(config, out / "zoo", num_workers=1, progress=False)
    return config, out / "zoo", corpus


def test_lora_zoo_holds_adapters_of_one_saved_base_and_resumes(lora_zoo):
    from igpg_hf.training.zoo_builder import build_zoo

    config, folder, corpus = lora_zoo
    base = load_base_model(folder / "base_model")
    rows = list(corpus)
    assert sorted(c.metadata.hyperparams["lora"]["r"] for c in rows) == [1, 2]
    for c in rows:
        hp = c.metadata.hyperparams
        assert hp["base_model"] == base.identity and hp["peft_config"]["peft_type"] == "LORA"
        assert c.metadata.zoo_kind == "lora" and c.metadata.arch_family == "adapter:lora"
        spec = AdapterSpec(hp["peft_config"], c.layout, hp["base_model"], hp["base_arch"])
        assert c.metadata.arch_text == spec.text()
        acc = adapter_accuracy(base, c.state_dict(), spec, "mnist_rot90")
        assert acc == pytest.approx(100 * c.metadata.test_acc, abs=1e-6)
    again = build_zoo(config, folder, num_workers=1, progress=False)
    assert again.build_stats["runs_trained"] == 0  # the base is reloaded, not retrained
    assert load_base_model(folder / "base_model").identity == base.identity


@pytest.fixture(scope="module")
def lora_pipeline(lora_zoo, tmp_path_factory):
    from igpg_hf.training.pipeline import PipelineRecipe, train_pipeline

    _, folder, corpus = lora_zoo
    recipe = PipelineRecipe.from_preset("smoke", vqvae_overrides={"lora_factors": "balanced"})
    out = tmp_path_factory.mktemp("lora_pipe")
    pipe = train_pipeline(corpus, recipe, out / "run", progress=False)
    pipe.save_pretrained(out / "pipeline")
    return pipe, out / "pipeline"


def test_pipeline_generates_adapters_from_a_spec_folder_or_identity(lora_pipeline, lora_zoo, tmp_path):
    pipe, _ = lora_pipeline
    _, folder, corpus = lora_zoo
    base = load_base_model(folder / "base_model")
    assert sorted(s.r for s in pipe.adapter_specs(base.identity)) == [1, 2]
    spec = pipe.resolve_adapter(base.identity[:20], r=2)
    assert pipe.resolve_adapter(folder / "base_model", r=2) == spec
    with pytest.raises(ValueError, match="matches 2"):
        pipe.resolve_adapter(base.identity)  # two ranks: which one?
    out = pipe("Classify handwritten digits, rotated by 90 degrees", adapter=spec, num_samples=2, seed=0)
    assert out.adapter == spec and len(out.state_dicts) == 2
    assert all(list(sd) == [e.name for e in spec.layout.entries] for sd in out.state_dicts)
    saved = save_adapter(tmp_path / "template", out.state_dicts[0], spec)
    assert pipe.resolve_adapter(saved) == spec  # an adapter folder names its spec
    with pytest.raises(ValueError, match="whole network"):
        pipe("Classify digits", adapter=spec, align_labels=True, dataset="mnist_rot90")
    with pytest.raises(ValueError, match="not adapters"):
        pipe("Classify digits", architecture="tiny_cnn").save_adapters(tmp_path / "x")


def test_generate_cli_writes_adapter_folders_that_reproduce_the_reported_accuracy(
    lora_pipeline, lora_zoo, tmp_path
):
    from typer.testing import CliRunner

    from igpg_hf.cli import app

    _, pipeline_dir = lora_pipeline
    _, folder, _ = lora_zoo
    out = tmp_path / "adapters"
    args = ["generate", "Classify handwritten digits, rotated by 90 degrees", "--pipeline", str(pipeline_dir)]
    args += ["--adapter", str(folder / "base_model"), "--rank", "2", "--num-samples", "2", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--evaluate", "mnist_rot90"])
    assert result.exit_code == 0, result.output
    folders = sorted(out.iterdir())
    assert [f.name for f in folders] == ["sample-0", "sample-1"]
    from igpg_hf.zoo.tasks import load_task_data
    from igpg_hf.zoo.training import evaluate

    data = load_task_data("mnist_rot90")
    for f in folders:
        reported = json.loads((f / "igpg_adapter.json").read_text())["test_accuracy_percent"]
        assert f"{reported:.1f} %" in result.output
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(load_base_model(folder / "base_model").module, str(f))
        assert not [w for w in caught if "missing" in str(w.message)]
        assert 100.0 * evaluate(model, data.x_test, data.y_test)[0] == pytest.approx(reported, abs=1e-9)


@pytest.mark.slow
def test_readme_adapter_snippet_runs(lora_pipeline, lora_zoo, tmp_path):
    """The README's adapter block, on the tiny zoo and the smoke recipe (the fixtures' folders are reused)."""
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Adapters: LoRA.*?```python\n(.*?)```", readme, re.S).group(1)
    small = {
        'ZooConfig.from_preset("lora")': 'ZooConfig.from_preset("lora_tiny", tasks=["mnist_rot90"])',
        'PipelineRecipe.from_preset("lora")': (
            'PipelineRecipe.from_preset("smoke", vqvae_overrides={"lora_factors": "balanced"})'
        ),
        "r=4": "r=2",
    }
    for old, new in small.items():
        assert old in code, old
        code = code.replace(old, new)
    _, zoo_dir, _ = lora_zoo
    shutil.copytree(zoo_dir, tmp_path / "lora_zoo")
    shutil.copytree(lora_pipeline[1].parent / "run", tmp_path / "lora_run")
    code += "\nprint('folders', len(folders), type(model).__name__)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "folders 5 PeftModel" in proc.stdout
