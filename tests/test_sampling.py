"""The decode loop: tokens identical to transformers' generate(), random streams, candidates, threads."""

import pytest
import torch

import igpg_hf.sampling as sampling_module
from igpg_hf import IGPGConditions, IGPGPriorConfig, IGPGPriorModel
from igpg_hf.sampling import (
    SampledTokens,
    SamplingConfig,
    block_windows,
    generation_num_threads,
    sample_weight_tokens,
    sequence_hash,
    torch_threads,
)

SETTINGS = {
    "greedy": SamplingConfig(do_sample=False),
    "T=1": SamplingConfig(),
    "T=0.7": SamplingConfig(temperature=0.7),
    "top-k": SamplingConfig(top_k=5),
    "top-p": SamplingConfig(top_p=0.9),
    "T+top-k+top-p": SamplingConfig(temperature=1.5, top_k=10, top_p=0.8),
    "top-p 0.5 T=0.5": SamplingConfig(temperature=0.5, top_p=0.5),
}


def _prior(sharpness: float = 1.0, attn: str | None = None, **kw) -> IGPGPriorModel:
    """A random tiny prior; ``sharpness`` scales the (tied) token embeddings so the next-token distributions get
    peaked like a trained prior's (top-p then keeps few tokens and takes the partial-sort path)."""
    torch.manual_seed(0)
    cfg = dict(
        vocab_size=512, tokens_per_chunk=2, block_overlap=16, position_scheme="absolute", text_pooling="mean"
    )  # as generate()
    prior = IGPGPriorModel(IGPGPriorConfig.from_preset("tiny", **{**cfg, **kw})).eval()
    if attn:
        prior.set_attn_implementation(attn)
    with torch.no_grad():
        prior.transformer.wte.weight.mul_(sharpness)
    return prior


def _cond(b: int = 1) -> IGPGConditions:
    g = torch.Generator().manual_seed(0)
    return IGPGConditions(
        text_embeds=torch.randn(b, 384, generator=g), arch_embeds=torch.randn(b, 384, generator=g)
    )


def _both(prior, n, samples, s, **kw) -> tuple[SampledTokens, SampledTokens]:
    """The loop and generate() from the same one-stream generator."""
    a = sample_weight_tokens(prior, _cond(), n, samples, s, generator=torch.Generator().manual_seed(7), **kw)
    b = sample_weight_tokens(
        prior, _cond(), n, samples, s, generator=torch.Generator().manual_seed(7), backend="generate", **kw
    )
    return a, b


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("samples", [1, 4])
def test_loop_tokens_identical_to_generate(name, samples):
    for prior in (_prior(1.0), _prior(12.0)):  # flat (top-p sorts) and peaked (top-p from a partial sort)
        a, b = _both(prior, 60, samples, SETTINGS[name])
        assert a.tokens.shape == (samples, 60)
        assert torch.equal(a.tokens, b.tokens)
        assert torch.equal(a.log_likelihood, b.log_likelihood)  # same raw logits, same arithmetic


def test_generate_keeps_only_the_last_logits():
    # generate() passes logits_to_keep=1 only to a forward whose signature names it; the loop's head matches that
    assert _prior()._supports_logits_to_keep()


def test_block_wise_loop_identical_to_generate():
    prior = _prior(4.0, n_positions=24, block_overlap=8)  # 20 weight tokens per block, 12 new after the first
    n = 200
    wins = block_windows(n, prior.config.max_weight_tokens, prior.config.block_overlap, 2)
    assert len(wins) > 12
    for s in (SETTINGS["T=1"], SETTINGS["T+top-k+top-p"], SETTINGS["greedy"]):
        a, b = _both(prior, n, 3, s)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.log_likelihood, b.log_likelihood)


@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "relu"])
def test_every_activation_identical_to_generate(act):
    """Presets train with the fused tanh GELU; priors saved with GPT-2's gelu_new (or any other) decode alike."""
    prior = _prior(4.0, activation_function=act)
    assert prior.config.activation_function == act
    for s in (SETTINGS["T=1"], SETTINGS["top-p"]):
        a, b = _both(prior, 50, 2, s)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.log_likelihood, b.log_likelihood)


def test_generate_keeps_the_instruction_token_states():
    """A prior that pools the instruction's token states gets them in both backends (the reference once dropped
    them when it split the batch by random stream, and pooled the embedding instead)."""
    prior = _prior(4.0, text_pooling="attention")
    g = torch.Generator().manual_seed(1)
    cond = IGPGConditions(
        text_embeds=torch.randn(1, 384, generator=g),
        text_states=torch.randn(1, 6, 384, generator=g),
        text_mask=torch.ones(1, 6, dtype=torch.bool),
    )
    kw = dict(sampling=SETTINGS["top-p"], seed=0)
    a = sample_weight_tokens(prior, cond, 40, 2, **kw)
    b = sample_weight_tokens(prior, cond, 40, 2, backend="generate", **kw)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.log_likelihood, b.log_likelihood)
    no_states = IGPGConditions(text_embeds=cond.text_embeds)  # the states change what the prior predicts
    c = sample_weight_tokens(prior, no_states, 40, 2, backend="generate", **kw)
    assert not torch.equal(b.log_likelihood, c.log_likelihood)


def test_conditions_select_rows_of_every_field():
    cond = IGPGConditions(
        text_embeds=torch.arange(3.0)[:, None],
        block_index=torch.arange(3),
        drop={"text": torch.tensor([True, False, True])},
        text_states=torch.arange(3.0)[:, None, None],
        text_mask=torch.ones(3, 1, dtype=torch.bool),
    )
    sub = cond.rows(torch.tensor([2, 0]))
    assert sub.text_embeds[:, 0].tolist() == [2.0, 0.0] and sub.block_index.tolist() == [2, 0]
    assert sub.drop["text"].tolist() == [True, True] and sub.text_states[:, 0, 0].tolist() == [2.0, 0.0]
    assert sub.text_mask.shape == (2, 1) and sub.arch_embeds is None
    assert cond.rows(slice(1, 2)).batch_size() == 1


def test_eager_attention_identical_to_generate():
    prior = _prior(4.0, attn="eager", n_positions=40)
    for s in (SETTINGS["T=1"], SETTINGS["greedy"]):
        a, b = _both(prior, 90, 2, s)
        assert torch.equal(a.tokens, b.tokens)


def test_partial_top_p_is_exact_and_used(monkeypatch):
    """Top-p from a partial sort gives transformers' full-sort result bit for bit, ties and -inf included."""
    g = torch.Generator().manual_seed(0)
    top_p_cls = sampling_module._TopP
    for trial in range(300):
        V = [64, 512, 1000][trial % 3]
        scale = [1.0, 4.0, 10.0, 30.0][trial % 4]
        scores = torch.randn(5, V, generator=g) * scale
        if trial % 5 == 0:  # ties, also at the cut
            scores = (scores * 2).round() / 2
        if trial % 7 == 0:  # after top-k
            scores = sampling_module._top_k(scores, 20)
        top_p = [0.5, 0.8, 0.9, 0.95, 0.999][trial % 5]
        f = top_p_cls(top_p, V)
        f.min_rows = 1
        for _ in range(2):  # the second call uses the window size learned by the first
            assert torch.equal(f(scores), sampling_module._top_p_sorted(scores, top_p))
    # on a peaked prior most rows avoid the full sort
    filters = []
    monkeypatch.setattr(sampling_module, "_TopP", lambda *a: filters.append(top_p_cls(*a)) or filters[-1])
    prior = _prior(30.0)
    for s in (SETTINGS["top-p"], SETTINGS["T+top-k+top-p"]):
        filters.clear()
        a, b = _both(prior, 60, 16, s)
        assert torch.equal(a.tokens, b.tokens)
        assert filters[0].rows == 16 * 60 and filters[0].sorted_rows < 0.2 * filters[0].rows


def test_per_sample_generators_make_samples_batch_independent():
    prior = _prior(4.0)
    s = SamplingConfig(top_k=20)
    three = sample_weight_tokens(
        prior, _cond(), 80, 3, s, generator=[torch.Generator().manual_seed(i) for i in range(3)]
    )
    for i in range(3):
        one = sample_weight_tokens(prior, _cond(), 80, 1, s, generator=[torch.Generator().manual_seed(i)])
        assert torch.equal(one.tokens[0], three.tokens[i])
    # seed=s means per-sample generators s, s+1, ...
    by_seed = sample_weight_tokens(prior, _cond(), 80, 3, s, seed=0)
    assert torch.equal(by_seed.tokens, three.tokens)
    assert torch.equal(sample_weight_tokens(prior, _cond(), 80, 1, s, seed=2).tokens[0], three.tokens[2])
    # one sample: a per-sample generator, the same generator for all, and generate() all agree
    ref = sample_weight_tokens(
        prior, _cond(), 80, 1, s, generator=torch.Generator().manual_seed(1), backend="generate"
    )
    assert torch.equal(ref.tokens[0], three.tokens[1])
    # generate() honours per-sample generators too (one call per stream); progress counts decode steps
    steps = []
    per = sample_weight_tokens(
        prior,
        _cond(),
        80,
        3,
        s,
        generator=[torch.Generator().manual_seed(i) for i in range(3)],
        backend="generate",
        progress=steps.append,
    )
    assert torch.equal(per.tokens, three.tokens) and sum(steps) == 80


def test_generators_advance_as_generate_advances_them():
    prior = _prior()
    g_loop, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sample_weight_tokens(prior, _cond(), 300, 2, generator=g_loop)  # several blocks
    sample_weight_tokens(prior, _cond(), 300, 2, generator=g_ref, backend="generate")
    assert torch.equal(g_loop.get_state(), g_ref.get_state())
    # no generator: torch's global one, as generate() uses it
    torch.manual_seed(11)
    a = sample_weight_tokens(prior, _cond(), 40, 2).tokens
    torch.manual_seed(11)
    assert torch.equal(a, sample_weight_tokens(prior, _cond(), 40, 2, backend="generate").tokens)


def test_no_cache_decode_recomputes_the_sequence(monkeypatch):
    prior = _prior(4.0)
    seen = []
    real = sampling_module._Decoder.forward
    monkeypatch.setattr(
        sampling_module._Decoder,
        "forward",
        lambda self, x, cache=True: seen.append(x.shape[1]) or real(self, x, cache),
    )
    greedy = SETTINGS["greedy"]
    cached = sample_weight_tokens(prior, _cond(), 30, 2, greedy)
    assert seen == [prior.config.num_prefix_tokens] + [1] * 29
    seen.clear()
    plain = sample_weight_tokens(prior, _cond(), 30, 2, greedy, use_cache=False)
    assert seen == list(range(prior.config.num_prefix_tokens, prior.config.num_prefix_tokens + 30))
    assert torch.equal(plain.tokens, cached.tokens)
    assert torch.allclose(plain.log_likelihood, cached.log_likelihood, atol=1e-5)
    with pytest.raises(ValueError, match="real no-cache decode"):
        sample_weight_tokens(prior, _cond(), 30, 2, greedy, use_cache=False, backend="generate")


def test_candidates_are_the_most_likely_of_each_streams_draws():
    prior = _prior(4.0)
    gens = lambda: [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]  # noqa: E731
    best = sample_weight_tokens(prior, _cond(), 40, 2, candidates_per_sample=3, generator=gens())
    assert best.num_candidates == 6 and best.tokens.shape == (2, 40) and best.is_copy is None
    # sample i's 3 candidates are what its generator draws for 3 samples in one stream
    pool = [sample_weight_tokens(prior, _cond(), 40, 3, generator=g) for g in gens()]
    lls = torch.cat([p.log_likelihood for p in pool])
    assert sorted(best.log_likelihood.tolist()) == sorted(lls.tolist())[-2:]
    # copies rank last when asked; the prior's fingerprints say which draws are copies
    toks = torch.cat([p.tokens for p in pool])
    top2 = lls.argsort(descending=True)[:2]
    with pytest.raises(ValueError, match="fingerprints"):
        sample_weight_tokens(
            prior, _cond(), 40, 2, candidates_per_sample=3, generator=gens(), exclude_copies=True
        )
    prior.config.training_sequence_hashes = [sequence_hash(toks[i]) for i in top2]
    new = sample_weight_tokens(
        prior, _cond(), 40, 2, candidates_per_sample=3, generator=gens(), exclude_copies=True
    )
    assert new.is_copy == [False, False] and new.candidate_copies == 2
    assert sorted(new.log_likelihood.tolist()) == sorted(lls.tolist())[-4:-2]


def test_sampler_errors():
    prior = _prior()
    with pytest.raises(ValueError, match="one per sample"):
        sample_weight_tokens(prior, _cond(), 10, 3, generator=[torch.Generator()] * 2)
    with pytest.raises(ValueError, match="either seed= or generator="):
        sample_weight_tokens(prior, _cond(), 10, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="backend"):
        sample_weight_tokens(prior, _cond(), 10, backend="vllm")
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0)


def test_threads_default_and_override(monkeypatch):
    monkeypatch.delenv("IGPG_NUM_THREADS", raising=False)
    assert generation_num_threads(1e6) == 1  # a small step: one thread
    assert generation_num_threads(1e12) is None  # a large one: torch's own setting
    monkeypatch.setenv("IGPG_NUM_THREADS", "3")
    assert generation_num_threads(1e6) == 3
    monkeypatch.setenv("IGPG_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="IGPG_NUM_THREADS"):
        generation_num_threads(1e6)
    monkeypatch.delenv("IGPG_NUM_THREADS")
    before = torch.get_num_threads()
    seen = []
    with torch_threads(1):
        seen.append(torch.get_num_threads())
    assert seen == [1] and torch.get_num_threads() == before
    real = sampling_module._loop_block
    monkeypatch.setattr(
        sampling_module, "_loop_block", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k)
    )
    sample_weight_tokens(_prior(), _cond(), 10)
    assert seen[-1] == 1 and torch.get_num_threads() == before


def test_guidance_scale_mixes_the_instruction_and_null_instruction_logits():
    """Classifier-free guidance: scale 1 is plain sampling; scale 0 samples from the null instruction alone (the
    same tokens as dropping the instruction), block after block; other scales change the draw."""
    prior = _prior(4.0, n_positions=24, block_overlap=8)
    cond, n = _cond(2), 120
    dropped = IGPGConditions(
        text_embeds=cond.text_embeds,
        arch_embeds=cond.arch_embeds,
        drop={"text": torch.ones(2, dtype=torch.bool)},
    )
    kw = dict(seed=3, sampling=SamplingConfig(top_p=0.9))
    plain = sample_weight_tokens(prior, cond, n, 2, **kw)
    one = sample_weight_tokens(
        prior, cond, n, 2, seed=3, sampling=SamplingConfig(top_p=0.9, guidance_scale=1.0)
    )
    assert torch.equal(plain.tokens, one.tokens)
    null = sample_weight_tokens(prior, dropped, n, 2, **kw)
    zero = sample_weight_tokens(
        prior, cond, n, 2, seed=3, sampling=SamplingConfig(top_p=0.9, guidance_scale=0.0)
    )
    assert torch.equal(zero.tokens, null.tokens) and not torch.equal(zero.tokens, plain.tokens)
    # the reported likelihood stays the instruction-conditioned prior's own, not the null instruction's
    assert not torch.allclose(zero.log_likelihood, null.log_likelihood)
    strong = sample_weight_tokens(
        prior, cond, n, 2, seed=3, sampling=SamplingConfig(top_p=0.9, guidance_scale=3.0)
    )
    assert not torch.equal(strong.tokens, plain.tokens)
    with pytest.raises(ValueError, match="decode loop"):
        sample_weight_tokens(
            prior, cond, n, 1, seed=3, backend="generate", sampling=SamplingConfig(guidance_scale=2)
        )
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="guidance_scale must be"):
            SamplingConfig(guidance_scale=bad)


@pytest.mark.parametrize("scheme", ["absolute", "structure"])
def test_score_weight_tokens_is_the_samplers_log_likelihood_block_by_block(scheme):
    from igpg_hf import WeightLayout
    from igpg_hf.sampling import score_weight_tokens
    from igpg_hf.zoo import get_architecture

    prior = _prior(4.0, n_positions=24, block_overlap=8, position_scheme=scheme)
    positions, n = None, 60
    if scheme == "structure":
        positions = prior.weight_positions(WeightLayout.from_module(get_architecture("mlp_small").build()))
        n = len(positions)
    assert len(block_windows(n, prior.config.max_weight_tokens, prior.config.block_overlap, 2)) > 3
    cond = _cond(2)
    out = sample_weight_tokens(prior, cond, n, 3, SETTINGS["top-p"], seed=0, positions=positions)
    # rows 0-2 drawn under condition 0, rows 3-5 under condition 1; the sampler's likelihood is the prior's own
    scored = score_weight_tokens(prior, cond.repeat_interleave(3), out.tokens, positions, batch_size=4)
    assert scored.shape == (6,) and scored.dtype == torch.float32
    torch.testing.assert_close(scored / n, out.log_likelihood, atol=1e-4, rtol=1e-4)
    # one condition row for every sequence; the other condition scores the same tokens differently
    first = score_weight_tokens(prior, cond.rows(slice(0, 1)), out.tokens, positions)
    torch.testing.assert_close(first[:3], scored[:3], atol=1e-3, rtol=1e-5)
    assert not torch.allclose(first[3:], scored[3:])
    with pytest.raises(ValueError, match="rows"):
        score_weight_tokens(prior, cond, out.tokens, positions)
    if scheme == "structure":
        with pytest.raises(ValueError, match="positions"):
            score_weight_tokens(prior, cond.rows(slice(0, 1)), out.tokens)


def test_condition_posterior_is_the_bayes_posterior_of_the_first_condition():
    from igpg_hf.candidate_selection import condition_posterior

    ll = torch.tensor([[-10.0, -10.0, -10.0], [-1.0, -1.0 - 3.0, -50.0], [-900.0, -100.0, -100.0]])
    post = condition_posterior(ll)
    torch.testing.assert_close(post[:2], torch.tensor([1 / 3, 1 / (1 + torch.e**-3)]))
    assert 0 <= float(post[2]) < 1e-300 or float(post[2]) == 0.0
    with pytest.raises(ValueError, match="2 conditions"):
        condition_posterior(ll[:, :1])
    with pytest.raises(ValueError, match="finite"):
        condition_posterior(torch.tensor([[0.0, float("nan")]]))


def test_rank_candidates_breaks_score_ties_by_preference_then_likelihood():
    from igpg_hf.candidate_selection import rank_candidates

    scores, ll = [90.0, 90.0, 80.0, float("nan"), 90.0], [-0.1, -0.5, -0.01, 0.0, -0.3]
    assert rank_candidates(scores, ll) == [0, 4, 1, 2, 3]  # score, then likelihood; NaN last
    # the samples cannot tell 0, 1 and 4 apart: the ones drawn under the instruction itself come first
    assert rank_candidates(scores, ll, preferred=[False, True, True, False, True]) == [4, 1, 0, 2, 3]
    assert rank_candidates(scores, ll, [True, False, False, False, False], True, [True] * 5) == [
        4,
        1,
        2,
        3,
        0,
    ]
