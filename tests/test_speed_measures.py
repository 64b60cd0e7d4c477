"""Machine bounds and the speed measures the speed experiment calls (tiny sizes: they check wiring, not speed)."""

import torch

from igpg_hf import IGPGPriorConfig, IGPGPriorModel, IGPGVQVAEConfig, IGPGVQVAEModel
from igpg_hf.evaluation.hardware import measure_machine_bounds, peak_memory
from igpg_hf.evaluation.speed_measures import (
    busy_neighbour_slowdown,
    compare_sampling,
    generation_cost_by_size,
    prior_flops_per_token,
    sampling_speed_summary,
)


def _prior():
    torch.manual_seed(0)
    return IGPGPriorModel(
        IGPGPriorConfig.from_preset("tiny", vocab_size=64, tokens_per_chunk=2, position_scheme="absolute")
    ).eval()


def test_machine_bounds_are_measured():
    b = measure_machine_bounds(
        threads=(1,), matmul_size=64, copy_bytes=1 << 20, read_bytes=1 << 16, repeats=1
    )
    assert b.matmul_gflops[1] > 0 and b.copy_gb_s > 0 and b.read_gb_s > 0 and b.op_latency_us > 0
    assert b.to_dict()["matmul_gflops"] == {"1": b.matmul_gflops[1]}
    out, seconds, mb, method = peak_memory(lambda: torch.ones(1 << 22).sum())
    assert out == 1 << 22 and seconds >= 0 and mb >= 0 and method


def test_sampling_comparisons_and_summary():
    prior = _prior()
    r = compare_sampling(prior, 20, 2, modes=("loop", "generate", "no_cache"), repeats=1)
    assert r["tokens_identical"] is True  # one seeded stream, three ways to decode
    assert r["loop"]["min_seconds"] > 0 and r["generate"]["tokens_per_second"] > 0
    bounds = measure_machine_bounds(threads=(1,), matmul_size=64, copy_bytes=1 << 20, repeats=1)
    s = sampling_speed_summary(prior, 20, samples=(1, 3), repeats=1, bounds=bounds)["summary"]
    for key in ("sampling_speedup_1", "sampling_speedup_3", "cache_speedup_1", "loop_share_of_read_bound_1"):
        assert s[key] > 0, key
    assert s["tokens_identical_1"] and s["tokens_identical_3"]
    d = prior.config.n_embd
    assert prior_flops_per_token(prior) == 2.0 * (prior.config.n_layer * 12 * d * d + 64 * d)


def test_busy_neighbour_and_cost_by_size():
    r = busy_neighbour_slowdown(lambda: sum(range(10_000)), repeats=1)
    assert r["slowdown"] > 0 and r["busy"]["repeats"] == 1
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny")).eval()
    rows = generation_cost_by_size(_prior(), vq, ["mlp_tabular", "resnet56"])
    assert rows[0]["parameters"] == 404 and rows[0]["tokens_per_second"] > 0 and rows[0]["peak_mb"] >= 0
    assert "at most" in rows[1]["skipped"]  # more blocks than the prior can produce


def test_speed_config_refuses_other_than_two_batch_sizes():
    import pytest

    from igpg_hf.evaluation.experiments.speed import SpeedConfig

    assert SpeedConfig.from_preset("smoke").sampling_samples == [1, 5]
    with pytest.raises(ValueError, match="two batch sizes"):
        SpeedConfig(sampling_samples=[1])
