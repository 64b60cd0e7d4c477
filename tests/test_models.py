"""VQ-VAE and prior: shapes, losses, save/load round trips, sampling, clear errors."""

import pytest
import torch

from igpg_hf import (
    IGPGConditions,
    IGPGPriorConfig,
    IGPGPriorModel,
    IGPGVQVAEConfig,
    IGPGVQVAEModel,
    WeightLayout,
)
from igpg_hf.sampling import SamplingConfig, block_windows, sample_weight_tokens
from igpg_hf.training import gumbel_temperature
from igpg_hf.zoo import get_architecture


@pytest.fixture(scope="module")
def sd_layout():
    torch.manual_seed(0)
    sd = get_architecture("tiny_cnn").build().state_dict()
    return sd, WeightLayout.from_state_dict(sd)


@pytest.mark.parametrize("quantizer", ["gumbel", "vq", "fsq"])
def test_vqvae_forward_encode_decode(quantizer, sd_layout):
    sd, layout = sd_layout
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny", quantizer=quantizer))
    vq.fit_normalization([(layout, layout.vectorize(sd))])
    out = vq(torch.randn(16, 32), torch.arange(16), torch.ones(16, 32, dtype=torch.bool), tau=0.5)
    assert (
        out.reconstruction.shape == (16, 32)
        and out.indices.shape == (16, 2)
        and out.indices.dtype == torch.int64
    )
    assert out.loss.requires_grad and out.perplexity > 0
    ids = vq.encode(sd)
    assert ids.shape == (vq.num_tokens(layout),) and ids.max() < vq.config.vocab_size
    back = vq.decode(ids, layout, fill=sd)
    assert list(back) == list(sd) and all(back[k].shape == sd[k].shape for k in sd)


def test_masked_loss_ignores_padding():
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny")).eval()
    x = torch.randn(4, 32)
    mask = torch.ones(4, 32, dtype=torch.bool)
    mask[:, 16:] = False
    out = vq(x, torch.arange(4), mask)
    manual = ((out.reconstruction - x)[:, :16] ** 2).mean()
    assert torch.allclose(out.recon_loss, manual)
    assert not torch.allclose(vq(x, torch.arange(4)).recon_loss, manual)


def test_vqvae_save_load_identical(tmp_path, sd_layout):
    sd, layout = sd_layout
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny"))
    vq.fit_normalization([(layout, layout.vectorize(sd))])
    vq.save_pretrained(tmp_path)
    again = IGPGVQVAEModel.from_pretrained(tmp_path)
    ids = vq.encode(sd)
    assert torch.equal(again.encode(sd), ids)
    a, b = vq.decode(ids, layout), again.decode(ids, layout)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fsq_preset_keeps_demo_vocab_and_round_trips(tmp_path, sd_layout):
    sd, layout = sd_layout
    cfg = IGPGVQVAEConfig.from_preset("fsq")
    assert cfg.quantizer == "fsq" and cfg.vocab_size == IGPGVQVAEConfig.from_preset("demo").vocab_size == 512
    vq = IGPGVQVAEModel(cfg).eval()
    vq.fit_normalization([(layout, layout.vectorize(sd))])
    ids = vq.encode(sd)
    assert ids.shape == (vq.num_tokens(layout),) and 0 <= ids.min() and ids.max() < 512
    vq.save_pretrained(tmp_path)
    again = IGPGVQVAEModel.from_pretrained(tmp_path)
    assert again.config.fsq_levels == [8, 8, 8] and torch.equal(again.encode(sd), ids)
    a, b = vq.decode(ids, layout, fill=sd), again.decode(ids, layout, fill=sd)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_delta_normalization_restores_the_base(tmp_path):
    torch.manual_seed(0)
    base = get_architecture("mlp_small").build().state_dict()
    layout = WeightLayout.from_state_dict(base)
    vecs = [layout.vectorize(base) + 1e-3 * torch.randn(layout.num_float) for _ in range(4)]
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny", normalization="delta"))
    vq.fit_normalization([(layout, v) for v in vecs])
    chunks, _, _ = vq.prepare(vecs[0], layout)
    assert chunks.abs().max() < 10  # residuals are standardized, not "base + noise"
    assert torch.allclose(vq.restore(chunks, layout), vecs[0], atol=1e-5)
    vq.save_pretrained(tmp_path)
    again = IGPGVQVAEModel.from_pretrained(tmp_path)
    assert torch.equal(again.base_vector, vq.base_vector)
    with pytest.raises(ValueError, match="one base"):
        vq.check_layout(WeightLayout.from_state_dict(get_architecture("tiny_cnn").build().state_dict()))


def test_vqvae_rejects_out_of_range_tokens(sd_layout):
    sd, layout = sd_layout
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match="token ids must lie"):
        vq.decode(torch.full((vq.num_tokens(layout),), 10_000), layout)
    with pytest.raises(ValueError, match="needs 160 tokens"):
        vq.decode(torch.zeros(7, dtype=torch.long), layout)


def test_vqvae_decode_returns_one_type_per_method(sd_layout):
    """decode: one model's ids (N,) -> one state dict, never a list; decode_batch: (B, N) -> always a list."""
    sd, layout = sd_layout
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny")).eval()
    vq.fit_normalization([(layout, layout.vectorize(sd))])
    ids = vq.encode(sd, layout)
    one = vq.decode(ids, layout, fill=sd)
    assert isinstance(one, dict) and one.keys() == sd.keys()
    many = vq.decode_batch(ids[None].repeat(2, 1), layout, fill=sd)
    assert isinstance(many, list) and len(many) == 2 and all(torch.equal(one[k], many[1][k]) for k in one)
    with pytest.raises(ValueError, match="use decode_batch"):
        vq.decode(ids[None], layout)
    with pytest.raises(ValueError, match=r"shape \(B, N\)"):
        vq.decode_batch(ids, layout)


def test_gumbel_temperature_anneals_and_cycles():
    assert gumbel_temperature(0, 100, 1.0, 1e-4) == 1.0
    assert gumbel_temperature(80, 100, 1.0, 1e-4) == pytest.approx(1e-4)
    assert gumbel_temperature(50, 100, 1.0, 1e-4, cycles=2) == 1.0  # restart


def _prior(**kw):
    # sequences without a layout: the absolute-position prior (structure priors: tests/test_structure.py)
    torch.manual_seed(0)
    kw = {"position_scheme": "absolute", **kw}
    return IGPGPriorModel(
        IGPGPriorConfig.from_preset("tiny", vocab_size=64, tokens_per_chunk=2, block_overlap=16, **kw)
    )


def _cond(b=2):
    g = torch.Generator().manual_seed(0)
    return IGPGConditions(
        text_embeds=torch.randn(b, 384, generator=g),
        arch_embeds=torch.randn(b, 384, generator=g),
        dataset_feats=torch.randn(b, 5, 32, generator=g),
        dataset_labels=torch.arange(5).repeat(b, 1),
    )


def test_prior_loss_and_absent_conditions():
    prior = _prior()
    tokens = torch.randint(0, 64, (2, 50))
    loss = prior.sequence_loss(_cond(), tokens)
    assert loss.requires_grad and 3.0 < loss.item() < 6.0  # about log(64) at init
    only_text = IGPGConditions(text_embeds=torch.randn(2, 384))
    assert torch.isfinite(prior.sequence_loss(only_text, tokens))
    # the prefix differs with and without a dataset, so the condition is used
    assert not torch.allclose(
        prior.build_prefix(_cond()),
        prior.build_prefix(IGPGConditions(text_embeds=_cond().text_embeds, arch_embeds=_cond().arch_embeds)),
    )


def test_prior_sampling_is_seeded_and_survives_save_load(tmp_path):
    prior = _prior()
    a = sample_weight_tokens(prior, _cond(1), 40, num_samples=3, seed=0).tokens
    b = sample_weight_tokens(prior, _cond(1), 40, num_samples=3, seed=0).tokens
    assert a.shape == (3, 40) and torch.equal(a, b)
    prior.save_pretrained(tmp_path)
    again = IGPGPriorModel.from_pretrained(tmp_path)
    assert torch.equal(sample_weight_tokens(again, _cond(1), 40, num_samples=3, seed=0).tokens, a)
    greedy = sample_weight_tokens(prior, _cond(1), 10, sampling=SamplingConfig(do_sample=False)).tokens
    assert greedy.shape == (1, 10)


def test_block_wise_generation_past_the_context():
    prior = _prior()
    n = 3 * prior.config.max_weight_tokens
    wins = block_windows(n, prior.config.max_weight_tokens, prior.config.block_overlap, 2)
    assert wins[0].start == 0 and wins[-1].stop == n and len(wins) > 3
    assert all(w.start - w.context_start == 16 for w in wins[1:])
    out = sample_weight_tokens(prior, _cond(1), n, num_samples=2, seed=1).tokens
    assert out.shape == (2, n)


def test_prior_refuses_more_tokens_than_it_can_produce():
    prior = _prior(max_blocks=2)
    with pytest.raises(ValueError, match="at most 2 blocks"):
        sample_weight_tokens(prior, _cond(1), 10 * prior.config.max_weight_tokens)
    with pytest.raises(ValueError, match="exceeds the context"):
        prior.sequence_loss(_cond(1), torch.zeros(1, 500, dtype=torch.long))


def test_config_presets_and_validation():
    assert IGPGPriorConfig.from_preset("paper").n_layer == 12
    with pytest.raises(ValueError, match="unknown IGPGPriorConfig preset"):
        IGPGPriorConfig.from_preset("huge")
    with pytest.raises(ValueError, match="quantizer"):
        IGPGVQVAEConfig(quantizer="kmeans")


# --------------------------------------------------------------------------------------- conventions
def test_vqvae_follows_transformers_conventions(tmp_path, sd_layout):
    sd, layout = sd_layout
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny")).eval()
    vq.fit_normalization([(layout, layout.vectorize(sd))])
    vq.save_pretrained(tmp_path)
    model, info = IGPGVQVAEModel.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(model, IGPGVQVAEModel) and not info["missing_keys"] and not info["unexpected_keys"]
    x, pos = torch.randn(4, 32), torch.arange(4)
    out, tup = vq(x, pos), vq(x, pos, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 6 and torch.equal(tup[3], out.reconstruction)
    assert torch.equal(tup[0], out.loss) and torch.equal(tup[4], out.indices)


@pytest.mark.parametrize("quantizer", ["gumbel", "fsq"])
def test_vqvae_encodes_and_decodes_in_bfloat16(quantizer, sd_layout):
    sd, layout = sd_layout
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny", quantizer=quantizer)).eval()
    vq.fit_normalization([(layout, layout.vectorize(sd))])
    ref = vq.encode(sd)
    ids = vq.to(torch.bfloat16).encode(sd)
    assert ids.shape == ref.shape and ids.dtype == torch.int64 and (ids == ref).float().mean() > 0.9
    back = vq.decode(ids, layout, fill=sd)
    assert all(back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape for k in sd)


def test_plain_loop_through_forward_trains_the_conditioning():
    """A generic loop that only calls forward() (as Trainer does) updates every conditioning module."""
    prior = _prior()
    tokens, cond = torch.randint(0, 64, (2, 50)), _cond()
    mask = torch.ones(2, 50, dtype=torch.bool)
    out = prior(conditions=cond, weight_tokens=tokens, loss_mask=mask)
    assert torch.allclose(out.loss, prior.sequence_loss(cond, tokens, mask))
    assert out.logits.shape == (2, prior.config.num_prefix_tokens + 50, 64)
    opt = torch.optim.SGD(prior.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in prior.named_parameters()}
    prior(conditions=cond, weight_tokens=tokens).loss.backward()
    opt.step()
    changed = {n.split(".")[0] for n, p in prior.named_parameters() if not torch.equal(p, before[n])}
    assert {"text_proj", "arch_proj", "dataset_encoder", "block_embed", "transformer"} <= changed
    # conditions alone (no weight tokens) are a mistake, named as such; plain GPT-2 calls still work
    with pytest.raises(ValueError, match="need weight_tokens"):
        prior(conditions=cond)
    with pytest.raises(ValueError, match="labels are built"):
        prior(conditions=cond, weight_tokens=tokens, labels=tokens)
    assert prior(inputs_embeds=torch.randn(1, 3, prior.config.n_embd)).logits.shape == (1, 3, 64)


def test_models_save_their_own_card(tmp_path):
    from huggingface_hub import ModelCard

    prior = _prior(training_summary={"prior_steps": 5, "prior_final_loss": 2.5})
    prior.save_pretrained(tmp_path / "prior")
    data = ModelCard.load(tmp_path / "prior" / "README.md").data
    assert data.library_name == "igpg_hf" and [r.metric_value for r in data.eval_results] == [2.5]
    assert data.datasets is None  # no Hub corpus recorded: no dataset link invented


def test_save_options_reach_transformers(tmp_path):
    """diffusers passes variant/max_shard_size to a component only if its save_pretrained names them."""
    import inspect

    prior = _prior()
    assert {"variant", "max_shard_size"} <= set(inspect.signature(prior.save_pretrained).parameters)
    prior.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "model.fp16.safetensors").exists()
    again = IGPGPriorModel.from_pretrained(tmp_path, variant="fp16")
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), prior.parameters(), strict=True))
