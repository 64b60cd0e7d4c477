"""VQ-VAE decode in bounded batches, restored entry by entry: the one-pass result, in a fraction of the memory."""

import pytest
import torch

from igpg_hf import IGPGVQVAEConfig, IGPGVQVAEModel, WeightLayout
from igpg_hf.evaluation.hardware import peak_memory
from igpg_hf.zoo import get_architecture


def _vqvae(preset: str, sd, layout, **kw):
    torch.manual_seed(0)
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset(preset, **kw)).eval()
    vq.fit_normalization([(layout, layout.vectorize(sd))])
    return vq


def _one_pass(vq, ids, layout, fill):
    """The decode before bounded batches: every chunk at once, then the whole vector."""
    idx = ids.reshape(-1, vq.config.tokens_per_chunk)
    return layout.devectorize(
        vq.restore(vq.decode_indices(idx, torch.arange(idx.shape[0])), layout), fill=fill
    )


@pytest.mark.parametrize("normalization", ["layer", "delta", "none"])
@pytest.mark.parametrize("chunk_mode", ["layer", "model"])
def test_decode_matches_the_one_pass_decode(normalization, chunk_mode):
    for arch in ("resnet_small", "mlp_small"):  # BatchNorm buffers from fill, float and int entries
        torch.manual_seed(1)
        sd = get_architecture(arch).build().state_dict()
        layout = WeightLayout.from_state_dict(sd)
        vq = _vqvae("tiny", sd, layout, normalization=normalization, chunk_mode=chunk_mode)
        ids = torch.randint(0, vq.config.vocab_size, (vq.num_tokens(layout),))
        new, old = vq.decode(ids, layout, fill=sd), _one_pass(vq, ids, layout, sd)
        assert list(new) == list(old)
        assert all(torch.equal(new[k], old[k]) and new[k].dtype == old[k].dtype for k in old)
        # smaller batches: the decoder's products see fewer rows, equal up to float rounding
        small = vq.decode(ids, layout, fill=sd, batch_size=7)
        assert all(torch.allclose(small[k].float(), old[k].float(), atol=1e-5) for k in old)
        two = vq.decode_batch(torch.stack([ids, ids]), layout, fill=sd)
        assert len(two) == 2 and all(torch.equal(two[1][k], old[k]) for k in old)


def test_decode_peak_memory_stays_near_the_models_bytes():
    sd = get_architecture("resnet56").build().state_dict()  # 860 k parameters
    layout = WeightLayout.from_state_dict(sd)
    vq = _vqvae("demo", sd, layout, max_positions=4096)
    ids = torch.randint(0, vq.config.vocab_size, (vq.num_tokens(layout),))
    model_mb = 4 * layout.num_float / 2**20
    _, _, peak, _ = peak_memory(lambda: vq.decode(ids, layout, fill=sd, batch_size=512))
    # in one pass the decoder's activations of every chunk made it about 35 x the model (139 bytes/weight)
    assert peak < 8 * model_mb + 16, (peak, model_mb)
