"""Real Hub round trips against the in-process Hub (tests/hub_server.py): push, then load by repo id.

Every class goes up through the same push path and comes back bit for bit: the corpus (plain and streaming,
several shards, LFS uploads, Range reads), the VQ-VAE, the prior (also through ``AutoModelForCausalLM``) and the
pipeline (by repo id and revision), and the CLI's ``push``, ``corpus push``, ``corpus info --streaming`` and
``generate --pipeline REPO``. Models are tiny (a 32-wide text encoder instead of MiniLM) so this stays fast.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from huggingface_hub import DatasetCard, HfApi, ModelCard

from igpg_hf import (
    IGPGPipeline,
    IGPGPriorConfig,
    IGPGPriorModel,
    IGPGVQVAEConfig,
    IGPGVQVAEModel,
    WeightLayout,
)
from igpg_hf.conditioning.text import _default_path
from igpg_hf.corpus import CorpusWriter, WeightCorpus
from igpg_hf.zoo import get_architecture

USER = "igpg-tester"
TINY = get_architecture("tiny_cnn")
SUMMARY = {
    "prior_steps": 600,
    "prior_final_loss": 0.4321,
    "num_sequences": 5,
    "corpus": "igpg-tester/zoo",
    "corpus_repo_id": "igpg-tester/zoo",
    "demo_results": {"mean_generated_over_zoo": 0.97, "total_copies": 2, "note": "not a number"},
}


def tiny_text_encoder():
    """A 32-wide BERT with the MiniLM tokenizer: the pipeline's text encoder, small enough to push in a test."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(_default_path(), local_files_only=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    return BertModel(cfg).eval(), tok


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    sd = TINY.build().state_dict()
    layout = WeightLayout.from_state_dict(sd)
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny"))
    vq.fit_normalization([(layout, layout.vectorize(sd))])
    prior = IGPGPriorModel(
        IGPGPriorConfig.from_preset(
            "tiny",
            vocab_size=64,
            tokens_per_chunk=2,
            chunk_size=vq.config.chunk_size,  # a structure prior places tokens by the VQ-VAE's chunking
            text_embed_dim=32,
            training_summary=SUMMARY,
        )
    )
    enc, tok = tiny_text_encoder()
    return IGPGPipeline(vqvae=vq.eval(), prior=prior.eval(), text_encoder=enc, tokenizer=tok)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """Six tiny-CNN checkpoints on two tasks, in three parquet shards."""
    path = tmp_path_factory.mktemp("hubzoo") / "zoo"
    with CorpusWriter(path, shard_rows=2) as w:
        for i in range(6):
            torch.manual_seed(i)
            task = ("mnist", "mnist_rot90")[i % 2]
            w.add(TINY.build(), {"model_id": f"m{i}", "task": task, "arch_spec": TINY, "test_acc": 0.9})
    assert len(list((path / "data").glob("*.parquet"))) == 3
    return path


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def folder_digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------- corpus
def test_corpus_round_trip_plain_and_streaming(hub, zoo, tmp_path):
    corpus = WeightCorpus.from_folder(zoo)
    commit = corpus.push_to_hub("zoo")  # no namespace: lands in the token owner's
    assert commit.repo_url.repo_id == f"{USER}/zoo"
    shards = sorted(f"data/{p.name}" for p in (zoo / "data").glob("*.parquet"))
    assert hub.files(f"{USER}/zoo", "dataset") == sorted(
        [".gitattributes", "README.md", "corpus.json", *shards]
    )
    assert any(m == "PUT" and p.startswith("/__lfs/") for m, p, _ in hub.requests)  # parquet went through LFS
    expected = [c.weights for c in corpus]
    for streaming in (False, True):
        hub.requests.clear()
        remote = WeightCorpus.load(f"{USER}/zoo", streaming=streaming)
        assert remote.path is None and remote.streaming is streaming
        got = list(remote)
        assert [c.weights for c in got] == expected  # bit-exact, checksums verified on the way
        assert {c.source for c in got} == {f"{USER}/zoo"}
        if streaming:  # parquet read in byte ranges, as on the Hub
            assert any(r and r.startswith("bytes=") for _, p, r in hub.requests if p.endswith(".parquet"))
    # a re-push of a rebuilt, smaller corpus replaces the shards instead of mixing old and new ones
    first = hub.repo(f"{USER}/zoo", "dataset").branches["main"]
    with CorpusWriter(tmp_path / "zoo", shard_rows=8) as w:
        w.add(TINY.build(), {"model_id": "only", "task": "mnist", "arch_spec": TINY})
    WeightCorpus.from_folder(tmp_path / "zoo").push_to_hub(f"{USER}/zoo")
    assert [c.metadata.model_id for c in WeightCorpus.load(f"{USER}/zoo")] == ["only"]
    assert len([f for f in hub.files(f"{USER}/zoo", "dataset") if f.startswith("data/")]) == 1
    old = WeightCorpus.from_hub(f"{USER}/zoo", revision=first)
    assert [c.weights for c in old] == expected


def test_training_from_a_streamed_hub_corpus_records_it(hub, zoo, tmp_path):
    from igpg_hf.training import VQVAETrainingArgs, train_vqvae

    WeightCorpus.from_folder(zoo).push_to_hub("zoo-train")
    vq = train_vqvae(
        WeightCorpus.load(f"{USER}/zoo-train", streaming=True),
        IGPGVQVAEConfig.from_preset("tiny"),
        tmp_path / "run",
        VQVAETrainingArgs(steps=3, batch_size=64),
        progress=False,
    )
    summary = vq.config.training_summary
    assert summary["corpus_repo_id"] == f"{USER}/zoo-train" and summary["vqvae_steps"] == 3
    card = ModelCard.load(tmp_path / "run" / "final" / "README.md")
    assert card.data.datasets == [f"{USER}/zoo-train"]
    assert {r.metric_type for r in card.data.eval_results} == {"mse", "perplexity"}


# --------------------------------------------------------------------------------------- models
def test_vqvae_and_prior_push_paths_agree(hub, pipe, tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM

    for model, name in ((pipe.vqvae, "vq"), (pipe.prior, "prior")):
        a = model.push_to_hub(name)
        b = model.save_pretrained(tmp_path / f"{name}-saved", push_to_hub=True, repo_id=f"{name}-2")
        assert (a.repo_url.repo_id, b.repo_url.repo_id) == (f"{USER}/{name}", f"{USER}/{name}-2")
        card = hub.read(f"{USER}/{name}", "README.md")
        assert (
            card
            == hub.read(f"{USER}/{name}-2", "README.md")
            == (tmp_path / f"{name}-saved" / "README.md").read_bytes()
        )
        data = ModelCard(card.decode()).data
        assert (
            data.library_name == "igpg_hf" and data.license == "apache-2.0"
        )  # not transformers' generic card
        back = type(model).from_pretrained(f"{USER}/{name}")
        assert type(back) is type(model) and same_weights(back, model)
    assert isinstance(AutoModelForCausalLM.from_pretrained(f"{USER}/prior"), IGPGPriorModel)
    assert isinstance(AutoModel.from_pretrained(f"{USER}/vq"), IGPGVQVAEModel)


# --------------------------------------------------------------------------------------- pipeline
def test_pipeline_loads_by_repo_id_and_revision(hub, pipe, tmp_path):
    call = dict(architecture="tiny_cnn", num_samples=2, seed=3)
    ref = pipe("Classify handwritten digits", **call)
    commit = pipe.push_to_hub("pipe")
    assert commit.repo_url.repo_id == f"{USER}/pipe"
    again = IGPGPipeline.from_pretrained(f"{USER}/pipe")
    out = again("Classify handwritten digits", **call)
    assert torch.equal(out.token_ids, ref.token_ids)
    assert all(
        torch.equal(a[k], b[k]) for a, b in zip(out.state_dicts, ref.state_dicts, strict=True) for k in a
    )
    # a revision loads the pipeline as it was
    first = hub.repo(f"{USER}/pipe").branches["main"]
    changed = IGPGPipeline(
        vqvae=pipe.vqvae,
        prior=IGPGPriorModel(pipe.prior.config),
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
    )
    changed.push_to_hub(f"{USER}/pipe")
    assert not same_weights(IGPGPipeline.from_pretrained(f"{USER}/pipe").prior, pipe.prior)
    assert same_weights(IGPGPipeline.from_pretrained(f"{USER}/pipe", revision=first).prior, pipe.prior)
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a Hub model repo"):
        IGPGPipeline.from_pretrained(f"{USER}/no-such-pipeline")
    # diffusers' loading options keep working by repo id
    bf16 = IGPGPipeline.from_pretrained(
        f"{USER}/pipe", torch_dtype=torch.bfloat16, cache_dir=tmp_path / "cache"
    )
    assert bf16.prior.dtype == torch.bfloat16 and any((tmp_path / "cache").rglob("model_index.json"))
    offline = IGPGPipeline.from_pretrained(
        f"{USER}/pipe", cache_dir=tmp_path / "cache", local_files_only=True
    )
    assert same_weights(offline.prior, changed.prior)


def test_pipeline_push_paths_agree(hub, pipe, tmp_path):
    # the project's card, not diffusers' generic one, and the same one a local save writes
    pipe.push_to_hub("pipe")
    pipe.save_pretrained(tmp_path / "local")
    assert hub.read(f"{USER}/pipe", "README.md") == (tmp_path / "local" / "README.md").read_bytes()
    components = [f for f in hub.files(f"{USER}/pipe") if "/" in f]
    assert components and not any(f.endswith("README.md") for f in components)  # one card, the pipeline's
    # save_pretrained(push_to_hub=True) without repo_id: the folder's name, in the user's namespace
    pipe.save_pretrained(tmp_path / "pipe-from-save", push_to_hub=True)
    assert hub.files(f"{USER}/pipe-from-save") == hub.files(f"{USER}/pipe")
    assert hub.read(f"{USER}/pipe-from-save", "README.md") == hub.read(f"{USER}/pipe", "README.md")


def test_namespace_rules(hub, pipe):
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    api = HfApi()
    assert api.create_repo("org-pipe").repo_id == f"{USER}/org-pipe"
    assert pipe.vqvae.push_to_hub("igpg-org/vq").repo_url.repo_id == "igpg-org/vq"  # an org the user is in
    with pytest.raises(HfHubHTTPError, match="403"):
        api.create_repo("someone-else/vq")
    with pytest.raises(RepositoryNotFoundError):  # a bare name addresses no repo
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="org-pipe")


# --------------------------------------------------------------------------------------- cards
def test_cards_carry_real_metadata(hub, pipe, zoo, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    card = ModelCard.load(tmp_path / "p" / "README.md")
    d = card.data
    assert d.library_name == "igpg_hf" and d.license == "apache-2.0" and d.datasets == ["igpg-tester/zoo"]
    results = {r.metric_type: r for r in d.eval_results}  # model-index, parsed back by huggingface_hub
    assert results["loss"].metric_value == 0.4321 and results["loss"].dataset_type == "igpg-tester/zoo"
    assert (
        results["mean_generated_over_zoo"].metric_value == 0.97 and results["total_copies"].metric_value == 2
    )
    assert "note" not in results and d.base_model is None  # trained from scratch: no base model to name
    assert "https://github.com/)" not in card.text and "arxiv.org/abs/2504.02012" in card.text
    card.validate()  # the Hub's metadata check (POST /api/validate-yaml)
    ds = DatasetCard.load(zoo / "README.md")
    assert ds.data.license == "apache-2.0" and ds.data.configs[0]["data_files"][0]["path"] == "data/*.parquet"
    assert ds.data.pretty_name == "IGPG weight corpus: cnn networks on mnist, mnist_rot90"
    assert "corpus corpus" not in (zoo / "README.md").read_text().lower()
    ds.validate(repo_type="dataset")
    # a prior fine-tuned from a Hub model names it as its base model
    from igpg_hf.training.provenance import base_model_summary

    pipe.prior.push_to_hub("base-prior")
    assert base_model_summary(IGPGPriorModel.from_pretrained(f"{USER}/base-prior")) == {
        "base_model": f"{USER}/base-prior"
    }
    assert base_model_summary(pipe.prior) == {}


# --------------------------------------------------------------------------------------- CLI
def test_cli_corpus_push_and_streaming_info(hub, zoo):
    from typer.testing import CliRunner

    from igpg_hf.cli import app

    res = CliRunner().invoke(app, ["corpus", "push", str(zoo), "zoo-cli"])
    assert res.exit_code == 0 and f"{USER}/zoo-cli" in res.output, res.output
    res = CliRunner().invoke(app, ["corpus", "info", f"{USER}/zoo-cli", "--streaming"])
    assert res.exit_code == 0 and "streamed 6 checkpoints" in res.output, res.output


def test_cli_push_leaves_its_source_and_generate_loads_by_repo_id(hub, pipe, zoo, tmp_path):
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from igpg_hf.cli import app

    run = CliRunner().invoke
    pipe.save_pretrained(tmp_path / "pipeline")
    before = folder_digest(tmp_path / "pipeline")
    res = run(app, ["push", str(tmp_path / "pipeline"), "pipe-cli"])
    assert res.exit_code == 0, res.output
    assert folder_digest(tmp_path / "pipeline") == before  # the source folder is only read
    for name, (sha, _) in before.items():
        assert hashlib.sha256(hub.read(f"{USER}/pipe-cli", name)).hexdigest() == sha  # uploaded as it is
    out = tmp_path / "gen" / "net.safetensors"
    res = run(
        app, ["generate", "Classify handwritten digits", "--pipeline", f"{USER}/pipe-cli", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    TINY.build().load_state_dict(load_file(str(out)), strict=True)
    # a folder that is not a pipeline is refused before anything is uploaded
    n = len(hub.repos)
    res = run(app, ["push", str(zoo), "not-a-pipeline"])
    assert res.exit_code != 0 and "model_index.json" in res.output and len(hub.repos) == n


def test_readme_hub_section_runs(hub, pipe, zoo):
    """The README's Hub snippet, executed against the in-process Hub (the user is "igpg-tester")."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## The Hub: push, and load by repo id", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    ns = {"pipe": pipe, "corpus": WeightCorpus.from_folder(zoo)}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["zoo"] == f"{USER}/mnist-zoo" and ns["repo"] == f"{USER}/igpg-mnist"
    assert isinstance(ns["prior"], IGPGPriorModel) and same_weights(ns["prior"], pipe.prior)
    assert len(list(ns["streamed"])) == 6 and isinstance(ns["pipe"], IGPGPipeline)
    # the README's commands name the same verbs the CLI test runs
    bash = section.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split()[1] for line in bash.splitlines()] == ["corpus", "corpus", "push", "generate"]
