"""IGPGPipeline: loadable state dicts, identical outputs after save/load, clear errors."""

import pytest
import torch

from igpg_hf import (
    IGPGPipeline,
    IGPGPriorConfig,
    IGPGPriorModel,
    IGPGVQVAEConfig,
    IGPGVQVAEModel,
    WeightLayout,
)
from igpg_hf.conditioning import load_text_encoder
from igpg_hf.zoo import get_architecture


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    sd = get_architecture("tiny_cnn").build().state_dict()
    layout = WeightLayout.from_state_dict(sd)
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny"))
    vq.fit_normalization([(layout, layout.vectorize(sd))])
    prior = IGPGPriorModel(
        IGPGPriorConfig.from_preset(
            "tiny", vocab_size=64, tokens_per_chunk=2, chunk_size=32, block_overlap=16
        )
    )
    enc, tok = load_text_encoder()
    return IGPGPipeline(vqvae=vq.eval(), prior=prior.eval(), text_encoder=enc, tokenizer=tok)


def test_generates_loadable_state_dicts(pipe):
    out = pipe(
        "Classify handwritten digits",
        architecture="tiny_cnn",
        dataset="mnist",
        num_samples=3,
        seed=0,
        return_modules=True,
    )
    assert len(out.state_dicts) == 3 and out.token_ids.shape == (3, 160)
    model = get_architecture("tiny_cnn").build()
    model.load_state_dict(out.state_dicts[0], strict=True)
    assert out.modules[1](torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # samples differ from each other
    assert not torch.equal(out.token_ids[0], out.token_ids[1])


def test_architecture_forms_and_dataset_forms(pipe):
    x, y = torch.rand(20, 1, 28, 28), torch.arange(10).repeat(2)
    a = pipe("Classify digits", architecture=get_architecture("tiny_cnn").to_dict(), dataset=(x, y), seed=1)
    module = get_architecture("tiny_cnn").build()
    b = pipe(
        "Classify digits",
        architecture=module,
        architecture_text=get_architecture("tiny_cnn").text(),
        dataset=(x, y),
        seed=1,
    )
    assert torch.equal(a.token_ids, b.token_ids)
    # a deeper net than the prior's context: generated block by block
    deep = pipe("Classify digits", architecture="resnet_small", seed=0)
    get_architecture("resnet_small").build().load_state_dict(deep.state_dicts[0], strict=True)


def test_save_load_round_trip_identical(pipe, tmp_path):
    out = pipe("Classify handwritten digits", architecture="tiny_cnn", num_samples=2, seed=3)
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").exists() and "IGPG pipeline" in (
        tmp_path / "README.md"
    ).read_text()
    again = IGPGPipeline.from_pretrained(tmp_path)
    out2 = again("Classify handwritten digits", architecture="tiny_cnn", num_samples=2, seed=3)
    assert torch.equal(out.token_ids, out2.token_ids)
    assert all(
        torch.equal(a[k], b[k]) for a, b in zip(out.state_dicts, out2.state_dicts, strict=True) for k in a
    )


def test_clear_errors(pipe):
    with pytest.raises(ValueError, match="instruction must be a non-empty string"):
        pipe("   ", architecture="tiny_cnn")
    with pytest.raises(ValueError, match="unknown architecture 'vit_giant'"):
        pipe("Classify digits", architecture="vit_giant")
    with pytest.raises(ValueError, match="needs architecture_text"):
        pipe("Classify digits", architecture=torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="num_samples"):
        pipe("Classify digits", num_samples=0)
    with pytest.raises(TypeError, match="dataset must be"):
        pipe("Classify digits", dataset=42)
    with pytest.raises(ValueError, match="unknown task"):
        pipe("Classify digits", dataset="no_such_task")
    broken = IGPGPipeline(
        vqvae=pipe.vqvae, prior=None, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    with pytest.raises(ValueError, match="component 'prior' is missing"):
        broken("Classify digits")


def test_vqvae_that_cannot_encode_the_layout(pipe):
    sd = get_architecture("mlp_small").build().state_dict()
    lay = WeightLayout.from_state_dict(sd)
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny", normalization="delta"))
    vq.fit_normalization([(lay, lay.vectorize(sd))])
    delta = IGPGPipeline(vqvae=vq, prior=pipe.prior, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    with pytest.raises(ValueError, match="only accepts that base's layout"):
        delta("Classify digits", architecture="tiny_cnn")


def test_candidates_likelihood_and_copy_exclusion(pipe):
    from igpg_hf.conditioning import encode_text
    from igpg_hf.modeling_prior import IGPGConditions
    from igpg_hf.sampling import block_windows, sequence_hash

    def kw():  # one stream for the whole batch: 6 samples and 2 x 3 candidates draw the same 6 sequences
        return dict(architecture="tiny_cnn", generator=torch.Generator().manual_seed(5))

    plain = pipe("Classify handwritten digits", num_samples=6, **kw())
    assert plain.is_copy is None and plain.num_candidates == 6 and len(plain.log_likelihood) == 6
    # the reported log-likelihood is the prior's own mean log-probability per token of the sequence
    _, text, _, _ = pipe.resolve_architecture("tiny_cnn")
    emb = encode_text(["Classify handwritten digits", text], pipe.text_encoder, pipe.tokenizer)
    cond = IGPGConditions(text_embeds=emb[:1].expand(6, -1), arch_embeds=emb[1:].expand(6, -1))
    cfg, toks, total = pipe.prior.config, plain.token_ids, torch.zeros(6)
    places = pipe.prior.weight_positions(pipe.resolve_architecture("tiny_cnn")[0])
    wins = block_windows(toks.shape[1], cfg.max_weight_tokens, cfg.block_overlap, cfg.tokens_per_chunk)
    assert len(wins) > 1  # the tiny prior's context is shorter than the model: scored window by window
    with torch.no_grad():
        for w in wins:
            cond.block_index = torch.full((6,), w.index, dtype=torch.long)
            pre = pipe.prior.build_prefix(cond, 6)
            logits = pipe.prior(
                inputs_embeds=pipe.prior.embed_sequence(
                    pre, toks[:, w.context_start : w.stop], places[w.context_start : w.stop]
                )
            ).logits
            new = toks[:, w.start : w.stop]
            lp = torch.log_softmax(logits[:, -new.shape[1] - 1 : -1].float(), -1)
            total += lp.gather(-1, new[..., None]).squeeze(-1).sum(1)
    assert torch.allclose(total / toks.shape[1], torch.tensor(plain.log_likelihood), atol=1e-4)
    # best of 3 candidates per sample: the kept ones are the most likely of a larger seeded draw
    best = pipe("Classify handwritten digits", num_samples=2, candidates_per_sample=3, **kw())
    assert best.num_candidates == 6 and len(best.state_dicts) == 2
    assert sorted(best.log_likelihood) == sorted(plain.log_likelihood)[-2:]
    # exclude_copies needs the training fingerprints; pretend two of the six draws were training sequences
    with pytest.raises(ValueError, match="fingerprints"):
        pipe("Classify handwritten digits", num_samples=2, exclude_copies=True, **kw())
    order = sorted(range(6), key=lambda i: -plain.log_likelihood[i])
    pipe.prior.config.training_sequence_hashes = [sequence_hash(plain.token_ids[i]) for i in order[:2]]
    try:
        new = pipe(
            "Classify handwritten digits", num_samples=2, candidates_per_sample=3, exclude_copies=True, **kw()
        )
        assert new.is_copy == [False, False] and new.candidate_copies == 2
        assert sorted(new.log_likelihood) == sorted(plain.log_likelihood[i] for i in order[2:4])
        plain2 = pipe("Classify handwritten digits", num_samples=6, **kw())
        assert sum(plain2.is_copy) == 2
    finally:
        pipe.prior.config.training_sequence_hashes = None


def test_label_alignment_option(pipe):
    x, y = torch.rand(40, 1, 28, 28), torch.arange(10).repeat(4)
    kw = dict(architecture="tiny_cnn", dataset=(x, y), num_samples=2, seed=4)
    plain = pipe("Classify digits", **kw)
    assert plain.label_alignments is None
    out = pipe("Classify digits", align_labels=True, **kw)
    assert torch.equal(out.token_ids, plain.token_ids) and len(out.label_alignments) == 2
    for a, sd, sd0 in zip(out.label_alignments, out.state_dicts, plain.state_dicts, strict=True):
        assert a.num_samples == 40 and sorted(a.permutation) == list(range(10))
        # an untrained net's outputs are noise: no reordering is significant, so nothing changes
        assert not a.applied and all(torch.equal(sd[k], sd0[k]) for k in sd)
    # separate alignment samples (a task name) take precedence over the dataset condition
    other = pipe("Classify digits", align_labels=True, alignment_samples="mnist", **kw)
    assert other.label_alignments[0].num_samples == 50
    with pytest.raises(ValueError, match="align_labels=True needs labelled samples"):
        pipe("Classify digits", architecture="tiny_cnn", align_labels=True)
    with pytest.raises(TypeError, match="alignment_samples must be"):
        pipe("Classify digits", architecture="tiny_cnn", align_labels=True, alignment_samples=3)


def test_model_cpu_offload_moves_one_component_per_stage(pipe):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            pipe.enable_model_cpu_offload()
    ref = pipe("Classify handwritten digits", architecture="tiny_cnn", num_samples=2, seed=6)
    moves = []
    originals = {n: getattr(pipe, n).to for n in ("text_encoder", "prior", "vqvae")}
    for n, orig in originals.items():
        getattr(pipe, n).to = lambda *a, _o=orig, _n=n, **k: (moves.append((_n, str(a[0]))), _o(*a, **k))[1]
    try:
        pipe.enable_model_cpu_offload(device="cpu")  # the same staging as on a GPU, checkable on a CPU runner
        moves.clear()
        out = pipe("Classify handwritten digits", architecture="tiny_cnn", num_samples=2, seed=6)
        # the texts' embeddings are cached from the call above: the text encoder has no stage
        assert [n for n, _ in moves] == ["prior", "prior", "vqvae", "vqvae"]
        assert torch.equal(out.token_ids, ref.token_ids)
        moves.clear()
        pipe("Classify handwritten digits, offloaded", architecture="tiny_cnn", num_samples=2, seed=6)
        assert [n for n, _ in moves] == ["text_encoder", "text_encoder", "prior", "prior", "vqvae", "vqvae"]
        pipe.to("cpu")  # turns offload off
        moves.clear()
        pipe("Classify handwritten digits", architecture="tiny_cnn", num_samples=1, seed=6)
        assert moves == []
    finally:
        for n, orig in originals.items():
            getattr(pipe, n).to = orig


def test_support_set_size_comes_from_the_prior_config(pipe):
    """Inference draws as many samples per class as the prior was trained with (saved in its config)."""
    _, y = pipe._labelled_samples("mnist")
    assert len(y) == 10 * pipe.prior.config.support_per_class == 50
    pipe.prior.config.support_per_class = 2
    try:
        assert len(pipe._labelled_samples("mnist")[1]) == 20
    finally:
        pipe.prior.config.support_per_class = 5


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_generators_make_samples_batch_independent(pipe):
    text, kw = "Classify handwritten digits", dict(architecture="tiny_cnn", top_k=20)
    three = pipe(text, num_samples=3, generator=[_g(0), _g(1), _g(2)], **kw)
    one = pipe(text, num_samples=1, generator=[_g(0)], **kw)
    assert torch.equal(three.token_ids[0], one.token_ids[0])
    assert all(torch.equal(three.state_dicts[0][k], one.state_dicts[0][k]) for k in one.state_dicts[0])
    # seed=s is the shortcut for the generators s, s + 1, ...: sample 2 of seed=0 is the sample of seed=2
    assert torch.equal(pipe(text, num_samples=3, seed=0, **kw).token_ids, three.token_ids)
    assert torch.equal(pipe(text, num_samples=1, seed=2, **kw).token_ids[0], three.token_ids[2])
    # one generator for the whole batch (generate()'s stream): reproducible, and it advances
    g = _g(4)
    first, second = pipe(text, num_samples=2, generator=g, **kw), pipe(text, num_samples=2, generator=g, **kw)
    assert torch.equal(first.token_ids, pipe(text, num_samples=2, generator=_g(4), **kw).token_ids)
    assert not torch.equal(first.token_ids, second.token_ids)
    with pytest.raises(ValueError, match="one per sample"):
        pipe(text, num_samples=2, generator=[_g(0)], **kw)


def test_return_dict_false_gives_the_fields_as_a_tuple(pipe):
    from dataclasses import fields

    from igpg_hf import IGPGPipelineOutput

    out = pipe("Classify handwritten digits", architecture="tiny_cnn", num_samples=2, seed=1)
    tup = pipe(
        "Classify handwritten digits", architecture="tiny_cnn", num_samples=2, seed=1, return_dict=False
    )
    assert isinstance(tup, tuple) and len(tup) == len(fields(IGPGPipelineOutput))  # None fields kept
    assert all(torch.equal(a[k], b[k]) for a, b in zip(tup[0], out.state_dicts, strict=True) for k in a)
    assert torch.equal(tup[2], out.token_ids) and tup[1] is None


def test_progress_bar_counts_decode_steps(pipe):
    import io

    buf = io.StringIO()
    pipe.set_progress_bar_config(file=buf, disable=False)
    try:
        out = pipe("Classify handwritten digits", architecture="resnet_small", seed=0)  # block by block
    finally:
        pipe.set_progress_bar_config(disable=None)
    n = out.token_ids.shape[1]
    assert f"{n}/{n}" in buf.getvalue()


def test_repeated_instructions_reuse_their_text_embedding(pipe):
    from igpg_hf.conditioning import encode_text

    calls = []
    hook = pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        a = pipe("Recognise a digit from its outline", architecture="tiny_cnn", seed=0)
        assert len(calls) >= 1
        calls.clear()
        b = pipe("Recognise a digit from its outline", architecture="tiny_cnn", seed=0)
        assert calls == [] and torch.equal(a.token_ids, b.token_ids)
    finally:
        hook.remove()
    # the cached embedding is the text encoded on its own
    fresh = encode_text(["Recognise a digit from its outline"], pipe.text_encoder, pipe.tokenizer)[0]
    assert torch.equal(pipe._text_embeddings(["Recognise a digit from its outline"])[0], fresh)


def test_threads_for_the_whole_call_are_set_and_restored(pipe, monkeypatch):
    """Text encoding, sampling and decoding run on the call's thread count; the caller's setting comes back."""
    seen = []
    hook = pipe.text_encoder.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        a = pipe("Spot the digit in a tiny picture", architecture="tiny_cnn", seed=3, num_threads=1)
        assert seen and set(seen) == {1} and torch.get_num_threads() == before
        b = pipe("Spot the digit in a tiny picture", architecture="tiny_cnn", seed=3, num_threads=2)
        assert torch.equal(a.token_ids, b.token_ids)  # threads change speed, not the samples
        monkeypatch.setenv("IGPG_NUM_THREADS", "1")
        seen.clear()
        pipe("Name the digit drawn here", architecture="tiny_cnn", seed=0)
        assert set(seen) == {1}
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="num_threads"):
        pipe("Spot the digit in a tiny picture", num_threads=0)
