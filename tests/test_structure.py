"""Structure-aware token positions: every family and depth, the prior's embedding, save/load, sampling."""

import pytest
import torch

from igpg_hf import IGPGConditions, IGPGPriorConfig, IGPGPriorModel, WeightLayout
from igpg_hf.sampling import SamplingConfig, sample_weight_tokens
from igpg_hf.weights import ROLES, STRUCTURE_FIELDS, layer_places, num_chunks, token_structure
from igpg_hf.zoo import get_architecture

F = {f: i for i, f in enumerate(STRUCTURE_FIELDS)}


def _layout(name, **kw):
    return WeightLayout.from_module(get_architecture(name, **kw).build())


@pytest.mark.parametrize("name", ["tiny_cnn", "tiny_cnn_rgb", "mlp_small", "cnn1d_small", "resnet_small"])
@pytest.mark.parametrize("mode", ["layer", "model"])
def test_every_family_has_one_place_per_token(name, mode):
    layout = _layout(name)
    pos = token_structure(layout, 32, 2, mode)
    assert pos.shape == (2 * num_chunks(layout, 32, mode), len(STRUCTURE_FIELDS))
    assert pos.dtype == torch.long and pos.min() >= 0 and pos[:, F["role"]].max() < len(ROLES)
    # the last token of the model is in the last block of the last stage, in its layer's last chunk
    last = pos[-1]
    assert (
        last[F["stage_from_end"]] == 0 and last[F["block_from_end"]] == 0 and last[F["chunk_from_end"]] == 0
    )
    assert (pos[:, F["token"]] == torch.arange(len(pos)) % 2).all()


@pytest.mark.parametrize("blocks", [[1, 1, 1], [1, 3, 2], [4, 4, 4], [7, 1, 9]])
def test_resnet_blocks_are_counted_from_both_ends(blocks):
    layout = _layout("resnet_small", blocks=blocks)
    places = layer_places(layout)
    for stage, n in zip((1, 2, 3), blocks, strict=True):
        convs = [p for p in places if p.name.startswith(f"layer{stage}.") and p.name.endswith("conv1")]
        assert [p.block for p in convs] == list(range(n))
        assert [p.block_from_end for p in convs] == list(range(n))[::-1]
        assert {p.stage for p in convs} == {stage} and {p.stage_from_end for p in convs} == {4 - stage}
    by_name = {p.name: p for p in places}
    assert by_name["conv1"].stage == 0 and by_name["fc"].stage_from_end == 0
    assert by_name["layer2.0.shortcut.1"].layer == 5  # conv1, bn1, conv2, bn2, shortcut conv, shortcut BN
    pos = token_structure(layout, 64, 4)
    roles = {ROLES[r] for r in pos[:, F["role"]].tolist()}
    assert roles == {
        "conv_weight",
        "norm_weight",
        "linear_weight",
    }  # BN and fc layers start with their weight


def test_names_of_ingested_state_dicts_parse():
    sd = {
        "embed.weight": torch.zeros(10, 4),
        "model.layers.0.attn.q.weight": torch.zeros(4, 4),
        "model.layers.0.attn.q.bias": torch.zeros(4),
        "model.layers.0.norm.weight": torch.zeros(4),
        "model.layers.1.attn.q.weight": torch.zeros(4, 4),
        "model.layers.1.attn.q.bias": torch.zeros(4),
        "model.layers.1.norm.weight": torch.zeros(4),
        "lm_head.weight": torch.zeros(10, 4),
        "step": torch.zeros((), dtype=torch.long),
    }
    places = {p.name: p for p in layer_places(WeightLayout.from_state_dict(sd))}
    assert set(places) == {
        "embed",
        "model.layers.0.attn.q",
        "model.layers.0.norm",
        "model.layers.1.attn.q",
        "model.layers.1.norm",
        "lm_head",
    }
    assert places["model.layers.1.norm"].block == 1 and places["model.layers.1.norm"].layer == 1
    assert places["model.layers.0.attn.q"].block_from_end == 1 and places["lm_head"].stage_from_end == 0
    pos = token_structure(WeightLayout.from_state_dict(sd), 8, 1)
    assert ROLES[int(pos[0, F["role"]])] == "linear_weight"


def _prior(**kw):
    torch.manual_seed(0)
    kw = {"n_positions": 64, "block_overlap": 16, **kw}
    cfg = IGPGPriorConfig.from_preset("tiny", vocab_size=64, tokens_per_chunk=2, chunk_size=32, **kw)
    return IGPGPriorModel(cfg).eval()


def _cond():
    return IGPGConditions(text_embeds=torch.randn(1, 384, generator=torch.Generator().manual_seed(0)))


def test_presets_use_structure_and_absolute_stays_available():
    assert IGPGPriorConfig.from_preset("demo").position_scheme == "structure"
    assert IGPGPriorConfig().position_scheme == "absolute"  # priors saved before the field load as trained
    assert _prior(position_scheme="absolute").structure_embed is None
    with pytest.raises(ValueError, match="position_scheme"):
        IGPGPriorConfig(position_scheme="rope")


def test_the_place_changes_the_prediction_and_missing_places_are_refused():
    prior = _prior()
    layout = _layout("resnet_small")
    pos = prior.weight_positions(layout)[:40]
    tokens = torch.randint(0, 64, (1, 40))
    a = prior.sequence_loss(_cond(), tokens, positions=pos)
    moved = pos.clone()
    moved[:, F["block"]] += 1
    assert not torch.allclose(a, prior.sequence_loss(_cond(), tokens, positions=moved))
    with pytest.raises(ValueError, match="positions="):
        prior.sequence_loss(_cond(), tokens)
    with pytest.raises(ValueError, match="positions="):
        sample_weight_tokens(prior, _cond(), 40)


def test_unseen_values_share_the_last_seen_row():
    prior = _prior()
    prior.config.structure_seen_max = {**{f: 20 for f in prior.config.structure_tables}, "block": 3}
    pos = prior.weight_positions(_layout("resnet_small", blocks=[6, 6, 6]))
    clipped = pos.clone()
    clipped[:, F["block"]] = clipped[:, F["block"]].clamp_max(3)
    assert torch.equal(prior.structure_embed(pos), prior.structure_embed(clipped))


def test_cached_and_uncached_sampling_agree_and_survive_save_load(tmp_path):
    prior = _prior()
    pos = prior.weight_positions(_layout("resnet_small"))
    n = len(pos)  # longer than the context: several blocks
    r = sample_weight_tokens(prior, _cond(), n, 2, seed=0, positions=pos)
    a, ll = r.tokens, r.log_likelihood
    assert a.shape == (2, n) and torch.isfinite(ll).all()
    assert torch.equal(
        a, sample_weight_tokens(prior, _cond(), n, 2, seed=0, positions=pos, use_cache=False).tokens
    )
    with pytest.raises(ValueError, match="decode loop only"):
        sample_weight_tokens(prior, _cond(), n, 2, seed=0, positions=pos, backend="generate")
    prior.config.structure_seen_max = {f: 3 for f in prior.config.structure_tables}
    prior.save_pretrained(tmp_path)
    again = IGPGPriorModel.from_pretrained(tmp_path).eval()
    assert again.config.structure_seen_max == prior.config.structure_seen_max
    assert torch.equal(again.weight_positions(_layout("resnet_small")), pos)
    b = sample_weight_tokens(prior, _cond(), 30, 2, seed=1, positions=pos[:30]).tokens
    assert torch.equal(b, sample_weight_tokens(again, _cond(), 30, 2, seed=1, positions=pos[:30]).tokens)
    greedy = sample_weight_tokens(
        again, _cond(), 10, sampling=SamplingConfig(do_sample=False), positions=pos[:10]
    )
    assert greedy.tokens.shape == (1, 10)


def test_likelihood_of_a_sample_matches_the_training_loss():
    """The decode loop scores a sequence exactly as training does (one embedding method for both)."""
    prior = _prior(n_positions=256)
    pos = prior.weight_positions(_layout("mlp_small"))[:60]
    r = sample_weight_tokens(prior, _cond(), 60, 1, seed=3, positions=pos)
    toks, ll = r.tokens, r.log_likelihood
    loss = prior.sequence_loss(_cond(), toks, positions=pos)
    assert ll.item() == pytest.approx(-loss.item(), abs=1e-4)


def test_a_prior_trained_on_small_nets_samples_a_deeper_one(tmp_path):
    """Trained on [1, 1, 1] / [1, 2, 1] ResNets, the prior samples a [4, 4, 4] one: more blocks (windows and ResNet
    blocks) than it ever saw, past its absolute max_blocks; the weights load and are finite."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from igpg_hf import IGPGVQVAEConfig
    from igpg_hf.sampling import block_windows
    from igpg_hf.training import PriorTrainingArgs, VQVAETrainingArgs, train_prior, train_vqvae
    from igpg_hf.zoo import architecture_for_task

    sys.path.insert(0, str(Path(__file__).parent))
    from _ddp_train_step import TinyText, tiny_tokenizer

    class Ck:
        def __init__(self, blocks, seed):
            torch.manual_seed(seed)
            spec = architecture_for_task("digits", "resnet_small", blocks=blocks)
            self.sd = spec.build().state_dict()
            self.layout = WeightLayout.from_state_dict(self.sd)
            self.metadata = SimpleNamespace(
                model_id=f"{blocks}-{seed}", task="digits", instruction="", arch_text=spec.text()
            )

        def state_dict(self):
            return self.sd

        def vector(self):
            return self.layout.vectorize(self.sd)

    cks = [Ck(b, s) for b in ([1, 1, 1], [1, 2, 1]) for s in range(2)]
    vq = train_vqvae(
        cks,
        IGPGVQVAEConfig.from_preset("tiny"),
        tmp_path / "vq",
        VQVAETrainingArgs(steps=4),
        progress=False,
    )
    cfg = IGPGPriorConfig.from_preset(
        "tiny", vocab_size=64, tokens_per_chunk=2, n_positions=68, block_overlap=16, max_blocks=2
    )
    prior = train_prior(
        cks,
        vq,
        TinyText(),
        tiny_tokenizer,
        cfg,
        tmp_path / "prior",
        PriorTrainingArgs(steps=4, batch_size=4, use_dataset_condition=False),
        progress=False,
    ).eval()
    assert prior.config.structure_seen_max["block"] == 1 and prior.config.chunk_size == 32
    deep = architecture_for_task("digits", "resnet_small", blocks=[4, 4, 4])
    layout = WeightLayout.from_module(deep.build())
    n = vq.num_tokens(layout)
    windows = lambda k: len(block_windows(k, cfg.max_weight_tokens, cfg.block_overlap, 2))  # noqa: E731
    assert windows(n) > max(windows(vq.num_tokens(c.layout)) for c in cks) and windows(n) > cfg.max_blocks
    cond = IGPGConditions(text_embeds=torch.randn(1, 384), arch_embeds=torch.randn(1, 384))
    tokens = sample_weight_tokens(prior, cond, n, 1, seed=0, positions=prior.weight_positions(layout)).tokens
    assert tokens.shape == (1, n)
    for sd in (vq.decode(t, layout, fill=deep.build().state_dict()) for t in tokens):
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
        deep.build().load_state_dict(sd, strict=True)


def test_vqvae_layer_positions_are_the_same_at_every_depth():
    from igpg_hf import IGPGVQVAEConfig, IGPGVQVAEModel

    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny", position_mode="layer")).eval()
    small, deep = _layout("resnet_small", blocks=[1, 1, 1]), _layout("resnet_small", blocks=[3, 1, 1])
    ps, pd = vq.chunk_positions(small), vq.chunk_positions(deep)
    assert len(pd) > len(ps) and ps.max() == pd.max()  # chunk index inside a layer, whatever the depth
    sd = get_architecture("resnet_small", blocks=[3, 1, 1]).build().state_dict()
    vq.fit_normalization([(deep, deep.vectorize(sd))])
    back = vq.decode(vq.encode(sd), deep, fill=sd)
    assert all(back[k].shape == v.shape for k, v in sd.items())
    with pytest.raises(ValueError, match="position_mode"):
        IGPGVQVAEConfig(position_mode="stage")


def test_blocks_without_overlap_decode_side_by_side():
    """block_overlap=0: blocks are independent given the conditions, so the loop decodes them as rows of one
    batch; greedy tokens and likelihoods equal the block-by-block order's, sampling is reproducible and keeps
    samples batch-independent, and a prior whose blocks overlap refuses the mode."""
    import igpg_hf.sampling as sampling_mod

    prior = _prior(block_overlap=0, n_positions=24)  # 20 tokens a block
    pos = prior.weight_positions(_layout("resnet_small"))
    n = len(pos)
    assert n > 200  # > 10 blocks, the last one shorter
    greedy = SamplingConfig(do_sample=False)
    cond = _cond()
    seq = sample_weight_tokens(prior, cond, n, sampling=greedy, positions=pos, parallel_blocks=False)
    par = sample_weight_tokens(prior, cond, n, sampling=greedy, positions=pos, parallel_blocks=True)
    assert torch.equal(seq.tokens, par.tokens)
    assert torch.allclose(seq.log_likelihood, par.log_likelihood, atol=1e-5)
    # default: on (more blocks than rows); reproducible; progress counts every position once
    steps = []
    a = sample_weight_tokens(prior, cond, n, 2, seed=0, positions=pos, progress=steps.append)
    assert sum(steps) == n and a.tokens.shape == (2, n) and torch.isfinite(a.log_likelihood).all()
    assert torch.equal(a.tokens, sample_weight_tokens(prior, cond, n, 2, seed=0, positions=pos).tokens)
    one = sample_weight_tokens(prior, cond, n, 1, seed=1, positions=pos).tokens
    assert torch.equal(a.tokens[1:], one)  # sample i of seed=s is the sample of seed=s+i
    # batches cut to the KV budget (here one block each): the same greedy tokens
    old = sampling_mod._PARALLEL_KV_BYTES
    sampling_mod._PARALLEL_KV_BYTES = 1
    try:
        cut = sample_weight_tokens(prior, cond, n, sampling=greedy, positions=pos, parallel_blocks=True)
    finally:
        sampling_mod._PARALLEL_KV_BYTES = old
    assert torch.equal(cut.tokens, seq.tokens)
    with pytest.raises(ValueError, match="block_overlap=0"):
        sample_weight_tokens(_prior(), cond, n, positions=pos, parallel_blocks=True)
