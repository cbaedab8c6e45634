"""Time two versions of odenet side by side in one process (interleaved, medians), to measure one change.

    python benchmarks/ab_versions.py REV_A REV_B [--rounds 40] [--batch 64]

REV is a git revision of this repository, or ``worktree``. Each version's ``odenet`` package is extracted to a
temporary folder under another name and imported; both build the SPEC model from the same seed. Measured:
one training step (batch 64 or ``--batch``, Adam, seed defaults), inference on a batch of 1000, and a long adjoint backward pass
(random tanh-bounded states, dopri5 with torchdiffeq's full norm: many backward steps).
"""
import argparse
import importlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

root = Path(__file__).resolve().parent.parent
p = argparse.ArgumentParser()
p.add_argument("revs", nargs=2)
p.add_argument("--rounds", type=int, default=40)
p.add_argument("--batch", type=int, default=64, help="training-step batch size")
args = p.parse_args()
tmp = Path(tempfile.mkdtemp())
sys.path.insert(0, str(tmp))
versions = {}
for i, rev in enumerate(args.revs):
    name = f"odenet_v{i}"
    if rev == "worktree":
        shutil.copytree(root / "odenet", tmp / name)
    else:
        tar = subprocess.run(["git", "-C", str(root), "archive", rev, "odenet"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=tar, check=True)
        (tmp / "odenet").rename(tmp / name)
    model_mod = importlib.import_module(f"{name}.model")
    train_mod = importlib.import_module(f"{name}.train")
    torch.manual_seed(0)
    m = model_mod.NeuralODEModel()
    opt = train_mod.make_optimizer(m, 1e-3) if hasattr(train_mod, "make_optimizer") else torch.optim.Adam(
        m.parameters(), lr=1e-3)
    versions[rev] = (m, opt)

torch.manual_seed(1)
x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
xi = torch.randn(1000, 1, 28, 28)
z0 = torch.tanh(torch.randn(64, 64)).requires_grad_()
times = {k: {"train step": [], "inference (1000)": [], "long adjoint backward": []} for k in versions}
for r in range(args.rounds):
    for rev, (m, opt) in versions.items():
        t0 = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        with torch.no_grad():
            m(xi)
        t2 = time.perf_counter()
        out = m.odeblock(z0).pow(2).sum()
        t3 = time.perf_counter()
        out.backward()
        times[rev]["long adjoint backward"].append(time.perf_counter() - t3)
        times[rev]["train step"].append(t1 - t0)
        times[rev]["inference (1000)"].append(t2 - t1)
print(f"{torch.get_num_threads()} torch threads, {args.rounds} interleaved rounds, training batch {args.batch}, "
      "medians in ms (first rounds dropped)")
print("| measurement | " + " | ".join(args.revs) + " | ratio |\n|---|---|---|---|")
for key in times[args.revs[0]]:
    med = [statistics.median(times[rev][key][2:]) * 1e3 for rev in args.revs]
    print(f"| {key} | " + " | ".join(f"{v:.2f}" for v in med) + f" | {med[0] / med[1]:.2f}x |")
shutil.rmtree(tmp)
