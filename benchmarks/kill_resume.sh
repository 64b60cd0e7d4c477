#!/usr/bin/env bash
# Manual kill-and-resume runs of the long jobs (issue 12): each job once uninterrupted (ref), once SIGKILLed
# part-way and rerun with the same command (run); then the results are compared bit for bit.
set -u
K=${1:-/tmp/killres}; rm -rf "$K"; mkdir -p "$K"; cd "$K"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
killat() { local secs=$1; shift; timeout -s KILL "$secs" "$@" > /dev/null 2>&1; echo "killed after ${secs}s (rc $?)"; }
echo "== zoo build --preset tiny"
Z="--preset tiny --set seeds=[0,1,2,3,4,5,6,7,8,9,10,11] --set epochs=20 --set keep_epochs=[19,20] --workers 2"
/usr/bin/time -f "ref %e s" igpg-hf zoo build --out ref_zoo $Z > /dev/null
killat 14 igpg-hf zoo build --out run_zoo $Z
igpg-hf zoo build --out run_zoo $Z | tail -1
echo "== train vqvae (smoke recipe, tiny VQ-VAE, 2000 steps, checkpoint every 100)"
V="--preset smoke --vqvae-preset tiny --steps 2000 --checkpoint-every 100"
/usr/bin/time -f "ref %e s" igpg-hf train vqvae --corpus ref_zoo --out ref_run $V > /dev/null
killat 30 igpg-hf train vqvae --corpus ref_zoo --out run_run $V
igpg-hf train vqvae -v --corpus ref_zoo --out run_run $V 2>&1 | grep -o "resumed from step [0-9]*"
echo "== train prior (smoke recipe, 300 steps, checkpoint every 50)"
P="--preset smoke --steps 300 --checkpoint-every 50"
/usr/bin/time -f "ref %e s" igpg-hf train prior --corpus ref_zoo --out ref_run $P > /dev/null
killat 40 igpg-hf train prior --corpus ref_zoo --out run_run $P
igpg-hf train prior -v --corpus ref_zoo --out run_run $P 2>&1 | grep -o "resumed from step [0-9]*"
echo "== demo --preset smoke"
/usr/bin/time -f "ref %e s" igpg-hf demo --preset smoke --out ref_demo > /dev/null
killat 30 igpg-hf demo --preset smoke --out run_demo
igpg-hf demo --preset smoke --out run_demo > /dev/null
python - <<'PY'
import hashlib, json
from pathlib import Path
from igpg_hf.corpus import WeightCorpus
def corpus(p):
    return {c.metadata.model_id: hashlib.sha256(c.vector().numpy().tobytes()).hexdigest() for c in WeightCorpus.from_folder(p)}
a, b = corpus("ref_zoo"), corpus("run_zoo")
print(f"zoo: {len(a)} checkpoints uninterrupted, {len(b)} after kill+rerun, identical: {a == b}")
def files(p):
    return {f.relative_to(p).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in Path(p).rglob("*.safetensors")}
for stage in ("vqvae", "prior"):
    x, y = files(f"ref_run/{stage}/final"), files(f"run_run/{stage}/final")
    print(f"{stage}: final weights identical: {x == y and bool(x)}")
r, s = json.loads(Path("ref_demo/results.json").read_text()), json.loads(Path("run_demo/results.json").read_text())
drop = lambda d: {k: v for k, v in d.items() if k not in ("timings", "generate_seconds_one", "generate_seconds_100")}
print("demo: results identical except timings:", drop(r) == drop(s))
print("stale temporaries:", [str(p) for p in Path(".").rglob("*") if p.name.endswith((".tmp", ".old"))])
PY
