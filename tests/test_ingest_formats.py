"""Issue 12: ingest reads the checkpoint formats people have, or refuses them by name; it never drops or merges.

Lightning, transformers and PEFT are not installed: their files are written here as those libraries write them
(a ``.ckpt`` is ``torch.save`` of ``{"state_dict": ..., "epoch": ...}``; a transformers folder is ``config.json``
beside ``model.safetensors`` or a sharded ``model.safetensors.index.json``; a PEFT folder is
``adapter_config.json`` beside ``adapter_model.safetensors``).
"""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from igpg_hf.corpus import REPORT_FILE, CheckpointError, WeightCorpus, ingest_folder, ingest_state_dicts
from igpg_hf.zoo.architectures import get_architecture

TINY = get_architecture("tiny_cnn")


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_cache")
    )


def sd_of(seed: int, spec=TINY) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return spec.build().state_dict()


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def by_id(corpus: WeightCorpus) -> dict:
    return {c.metadata.model_id: c for c in corpus}


def test_formats_people_have_are_read(tmp_path):
    src = tmp_path / "src"
    (src / "hf" / "bert-ish").mkdir(parents=True)
    (src / "hf" / "sharded").mkdir(parents=True)
    (src / "peft" / "run1").mkdir(parents=True)
    torch.save(sd_of(0), src / "pytorch_model.bin")
    torch.save(  # Lightning: the net under an attribute, so every key starts with "model."
        {
            "state_dict": {f"model.{k}": v for k, v in sd_of(1).items()},
            "epoch": 4,
            "global_step": 40,
            "pytorch-lightning_version": "2.4.0",
            "hyper_parameters": {"lr": 0.01},
        },
        src / "last.ckpt",
    )
    torch.save({f"module.{k}": v for k, v in sd_of(2).items()}, src / "ddp.pt")  # DDP
    save_file({f"_orig_mod.{k}": v for k, v in sd_of(3).items()}, str(src / "compiled.safetensors"))
    (src / "hf" / "bert-ish" / "config.json").write_text("{}")
    save_file(sd_of(4), str(src / "hf" / "bert-ish" / "model.safetensors"))
    torch.save({"step": 1}, src / "hf" / "bert-ish" / "training_args.bin")  # Trainer state beside the model
    (src / "hf" / "sharded" / "config.json").write_text("{}")
    sd5 = sd_of(5)
    keys = list(sd5)
    parts = {"model-00001-of-00002.safetensors": keys[:4], "model-00002-of-00002.safetensors": keys[4:]}
    for name, ks in parts.items():
        save_file({k: sd5[k] for k in ks}, str(src / "hf" / "sharded" / name))
    index = {"weight_map": {k: n for n, ks in parts.items() for k in ks}}
    (src / "hf" / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index))
    adapter = {"lora.A": torch.randn(2, 8), "lora.B": torch.zeros(8, 2)}
    save_file(adapter, str(src / "peft" / "run1" / "adapter_model.safetensors"))
    peft_cfg = {"peft_type": "LORA", "r": 2, "base_model_name_or_path": "org/base-model"}
    (src / "peft" / "run1" / "adapter_config.json").write_text(json.dumps(peft_cfg))
    spec = {"arch_spec": TINY.to_dict(), "task": "mnist"}
    meta = {
        "pytorch_model.bin": {"model_id": "bin", **spec},
        "last.ckpt": {"model_id": "lightning", **spec},
        "ddp.pt": {"model_id": "ddp"},  # no spec: the DDP prefix is still recognised
        "compiled.safetensors": {"model_id": "compiled", **spec},
        "hf/bert-ish": {"model_id": "hf", **spec},
        "hf/sharded": {"model_id": "sharded", **spec},
        "peft/run1": {"model_id": "adapter", "task": "mnist"},
    }
    (src / "metadata.json").write_text(json.dumps(meta))
    got = by_id(ingest_folder(src, tmp_path / "out"))
    assert sorted(got) == sorted(m["model_id"] for m in meta.values())
    for mid, seed in (("bin", 0), ("lightning", 1), ("ddp", 2), ("compiled", 3), ("hf", 4), ("sharded", 5)):
        assert same(got[mid].state_dict(), sd_of(seed)), mid  # prefixes removed: keys are the layer names
    got["lightning"].build_module()
    assert same(got["adapter"].state_dict(), adapter)
    hp = got["adapter"].metadata.hyperparams
    assert hp["base_model"] == "org/base-model" and hp["peft_config"]["r"] == 2


def test_one_id_twice_is_an_error_naming_both_sources(tmp_path):
    src = tmp_path / "a_beside"
    src.mkdir()
    torch.save(sd_of(0), src / "a.pt")
    save_file(sd_of(1), str(src / "a.safetensors"))
    with pytest.raises(ValueError, match=r"model_id 'a': a.pt and a.safetensors"):
        ingest_folder(src, tmp_path / "o1", allow_missing_metadata=True)
    (src / "metadata.json").write_text(
        json.dumps({"a.pt": {"model_id": "x"}, "a.safetensors": {"model_id": "x"}})
    )
    with pytest.raises(ValueError, match=r"model_id 'x': a.pt and a.safetensors"):
        ingest_folder(src, tmp_path / "o2")
    peft = tmp_path / "peft"
    for run in ("r1", "r2"):
        (peft / run).mkdir(parents=True)
        (peft / run / "adapter_config.json").write_text("{}")
        save_file({"w": torch.randn(2)}, str(peft / run / "adapter_model.safetensors"))
    (peft / "metadata.json").write_text(json.dumps({"adapter_model.safetensors": {"task": "mnist"}}))
    with pytest.raises(
        ValueError, match=r"'adapter_model.safetensors', a name 2 checkpoints share \(r1, r2\)"
    ):
        ingest_folder(peft, tmp_path / "o3")
    items = [({"w": torch.ones(2)}, {"model_id": "same"}), ({"w": torch.zeros(2)}, {"model_id": "same"})]
    with pytest.raises(ValueError, match=r"model_id 'same': item 0 and item 1"):
        ingest_state_dicts(items, tmp_path / "o4")


def test_resume_skips_the_same_bytes_and_refuses_other_bytes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    torch.save(sd_of(0), src / "a.pt")
    ingest_folder(src, tmp_path / "out", allow_missing_metadata=True)
    torch.save(sd_of(1), src / "b.pt")
    corpus = ingest_folder(src, tmp_path / "out", allow_missing_metadata=True)  # resumed: a verified, b added
    assert sorted(by_id(corpus)) == ["a", "b"]
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert report["resumed"] == ["a"] and report["ingested"] == ["b"]
    torch.save(sd_of(2), src / "a.pt")  # another checkpoint under an id the corpus already holds
    with pytest.raises(ValueError, match=r"'a' \(a.pt\) is already in the corpus .* other weights"):
        ingest_folder(src, tmp_path / "out", allow_missing_metadata=True)


def test_bad_checkpoints_are_refused_by_name_or_skipped_and_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    torch.save(sd_of(0), src / "good.pt")
    torch.save(nn.Linear(2, 3), src / "module.pt")  # a pickled nn.Module
    nan = sd_of(1)
    nan["features.conv1.bias"][0] = float("nan")
    torch.save(nan, src / "diverged.pt")
    (src / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00")
    (src / "keras.h5").write_bytes(b"\x89HDF")
    for name, pattern in (
        ("module.pt", r"module.pt holds a pickled nn.Module .*torch.save\(model.state_dict\(\), path\)"),
        ("diverged.pt", r"diverged.pt: .*'features.conv1.bias' contains NaN"),
        ("truncated.safetensors", r"truncated.safetensors is not a readable safetensors file"),
        ("keras.h5", r"keras.h5: Keras/HDF5 files are not supported"),
    ):
        one = tmp_path / f"only-{name}"
        one.mkdir()
        (one / name).write_bytes((src / name).read_bytes())
        with pytest.raises(CheckpointError, match=pattern):
            ingest_folder(one, tmp_path / f"out-{name}", allow_missing_metadata=True)
    corpus = ingest_folder(src, tmp_path / "out", allow_missing_metadata=True, on_error="skip")
    assert list(by_id(corpus)) == ["good"]
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert sorted(s["source"] for s in report["skipped"]) == [
        "diverged.pt",
        "keras.h5",
        "module.pt",
        "truncated.safetensors",
    ]
    assert all(s["error"] for s in report["skipped"])
    # every rerun skips them again and keeps the good one
    assert list(
        by_id(ingest_folder(src, tmp_path / "out", allow_missing_metadata=True, on_error="skip"))
    ) == ["good"]


def test_lightning_prefix_without_a_spec_is_reported_with_a_hint(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in sd_of(0, get_architecture("mlp_small")).items()}},
        src / "l.ckpt",
    )
    with caplog.at_level("WARNING"):
        corpus = ingest_folder(src, tmp_path / "out", allow_missing_metadata=True)
    assert "every key starts with 'model.'" in caplog.text and "arch_spec" in caplog.text
    assert next(iter(corpus)).layout.entries[0].name == "model.head.fc1.weight"  # kept, not guessed
