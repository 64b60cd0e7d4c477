"""Test session setup: offline by default, one torch thread, an in-process Hub (tests/hub_server.py) for the tests
that ask for it, and the smoke benchmark run once.

Threads: every test runs torch on one thread (and subprocesses inherit ``OMP_NUM_THREADS=1``). The models here
are tiny, so intra-op parallelism buys nothing, while torch's default of two threads on the two cores of the CI
machine oversubscribes them as soon as another job runs: small-model generation got 3.3x slower beside one busy
process (once 40x), one thread was unaffected.

huggingface_hub, datasets and diffusers read ``HF_ENDPOINT`` once, when they are imported, so the Hub's port is
reserved here, before any test module imports them; the ``hub`` fixture then serves on it and turns the Hub on
for one test. ``HF_HOME`` points into a temporary folder so no test reads or writes the user's caches or token.
"""

import atexit
import os
import shutil
import tempfile

import pytest
from hub_server import HubServer, reserve_socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
_HUB_SOCKET = reserve_socket()
_HUB_URL = "http://{}:{}".format(*_HUB_SOCKET.getsockname()[:2])
os.environ["HF_ENDPOINT"] = _HUB_URL
os.environ["HF_HUB_DISABLE_XET"] = "1"  # the test Hub speaks the LFS protocol, not Xet
os.environ.pop("HF_TOKEN", None)
_HF_HOME = tempfile.mkdtemp(prefix="igpg-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
for _var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
    os.environ.pop(_var, None)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def hub_server():
    """The in-process Hub, serving on 127.0.0.1 for the whole session."""
    server = HubServer(_HUB_SOCKET).start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server, monkeypatch, tmp_path):
    """Online for this test only, against an empty in-process Hub, with a write token and fresh caches.

    Sets the environment (for subprocesses) and the libraries' module-level copies of it (read at import time).
    """
    import datasets.config
    import huggingface_hub.constants as hf_constants

    if (
        hf_constants.ENDPOINT != hub_server.url
    ):  # imported before this conftest: the clients would go elsewhere
        pytest.fail(f"huggingface_hub points at {hf_constants.ENDPOINT}, not the test Hub {hub_server.url}")
    hub_server.reset()
    cache = tmp_path / "hf_cache"
    for var, value in {
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_TOKEN": hub_server.token,
        "HF_HUB_CACHE": str(cache / "hub"),
        "HF_DATASETS_CACHE": str(cache / "datasets"),
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache / "datasets"))
    yield hub_server


@pytest.fixture(scope="session")
def smoke_bench(tmp_path_factory):
    """The smoke benchmark, every experiment, in one folder (test_benchmark and test_cli read it)."""
    from igpg_hf.evaluation.benchmark import BenchConfig, run_benchmark

    out = tmp_path_factory.mktemp("bench")
    return out, run_benchmark(out, BenchConfig.from_preset("smoke"), progress=False)
