"""The README's main job end to end (smoke sizes), and the README's quickstart code."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from igpg_hf.evaluation.demo import DemoConfig, run_demo

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.slow  # the demo end to end (smoke preset) and the scripts run on it: CI runs them


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run_demo(out, DemoConfig.from_preset("smoke"), progress=False)
    return out


def test_demo_writes_results_for_scripts(demo_dir):
    res = json.loads((demo_dir / "results.json").read_text())
    assert res["generate_seconds_one"] > 0 and res["generate_seconds_100"] > 0
    assert res["tasks"], "no task evaluated"
    for task, r in res["tasks"].items():
        for key in ("zoo_mean_acc", "generated_acc", "random_init_acc", "recon_acc", "copies"):
            assert key in r, (task, key)
        assert len(r["generated_acc"]) == DemoConfig.from_preset("smoke").generation.num_samples
        assert 0 <= r["copies"] <= len(r["generated_acc"])
        assert 0 <= r["zoo_mean_acc"] <= 100 and 0 <= r["random_init_acc"] <= 100
        # new-only sampling: copies survive only when too few of the drawn candidates were new
        n, cfg = len(r["generated_acc"]), DemoConfig.from_preset("smoke").generation
        assert r["new_only_candidates"] == cfg.novel_candidates * n and len(r["new_only_acc"]) == n
        new_candidates = r["new_only_candidates"] - r["new_only_candidate_copies"]
        assert r["new_only_copies"] == max(0, n - new_candidates)
    assert (demo_dir / "results.png").stat().st_size > 1000
    assert (demo_dir / "pipeline" / "model_index.json").exists()


def test_demo_rerun_resumes_without_retraining(demo_dir):
    before = (demo_dir / "prior" / "final" / "model.safetensors").stat().st_mtime_ns
    res = run_demo(demo_dir, DemoConfig.from_preset("smoke"), progress=False)
    assert (demo_dir / "prior" / "final" / "model.safetensors").stat().st_mtime_ns == before
    assert res.timings["training_seconds"] < 30
    assert res.to_dict()["tasks"] == json.loads((demo_dir / "results.json").read_text())["tasks"]


def test_readme_quickstart_runs(demo_dir, tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```python\n(.*?)```", readme, re.S)
    assert block, "README has no python quickstart block"
    (tmp_path / "general").mkdir()  # the smoke demo's pipeline stands in for the general one
    shutil.copytree(demo_dir / "pipeline", tmp_path / "general" / "pipeline")
    proc = subprocess.run(
        [sys.executable, "-c", block.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "accuracy" in proc.stdout


@pytest.mark.slow
def test_quickstart_example_runs(demo_dir):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(demo_dir / "pipeline")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy of 5 samples" in proc.stdout
