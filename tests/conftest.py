"""Test session setup: never reach the Hugging Face Hub; one torch thread; the smoke benchmark, run once.

Threads: every test runs torch on one thread (and subprocesses inherit ``OMP_NUM_THREADS=1``). The models here
are tiny, so intra-op parallelism buys nothing, while torch's default of two threads on the two cores of the CI
machine oversubscribes them as soon as another job runs: small-model generation got 3.3x slower beside one busy
process (once 40x), one thread was unaffected.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_bench(tmp_path_factory):
    """The smoke benchmark, every experiment, in one folder (test_benchmark and test_cli read it)."""
    from igpg_hf.evaluation.benchmark import BenchConfig, run_benchmark

    out = tmp_path_factory.mktemp("bench")
    return out, run_benchmark(out, BenchConfig.from_preset("smoke"), progress=False)
