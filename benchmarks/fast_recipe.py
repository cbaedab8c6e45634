"""configs/fast.yaml against one epoch of the plain torchdiffeq script, whole process each, back to back.

    python benchmarks/fast_recipe.py --data-dir DATA [--seeds 0 1 2] [--config configs/fast.yaml]

For each seed, one after the other (never two at once): the plain script (the seed's model written with torchdiffeq,
``odeint_adjoint`` + dopri5, MNIST as one tensor: the faster of ``odenet bench speed``'s two plain scripts) trains
one epoch and evaluates the test set; then ``odenet train --config CONFIG --seed S --no-report`` runs to its end.
Wall seconds of each whole process (interpreter start, imports and data included) and the test accuracy after
the last epoch (nothing chosen on the test set), also with five test-time views when the config sets ``tta``.
``DATA`` must be writable (torchvision's MNIST class checks it).
The plain process takes its model from ``odenet.bench.plain_torchdiffeq`` (torchdiffeq's code, none of odenet's
engine); importing it through the package took 6.1 s against 6.0 s for torch, torchvision and torchdiffeq alone.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from odenet.data import split_files

PLAIN = """
import sys, torch
from torchvision import datasets
from odenet.bench import plain_torchdiffeq as plain
root = sys.argv[1]
torch.manual_seed(int(sys.argv[2]))
model = plain.NeuralODEModel()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
batches = plain.tensor_batches(root)
for _ in range(938):
    x, y = next(batches)
    plain.train_step(model, opt, x, y)
test = datasets.MNIST(root, train=False)
x = test.data.float().div(255).sub(0.1307).div(0.3081).unsqueeze(1)
with torch.no_grad():
    correct = sum(int((model(a).argmax(1) == b).sum()) for a, b in zip(x.split(1000), test.targets.split(1000)))
print(correct / len(test.targets))
"""


def timed(argv, env) -> tuple:
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"fast_recipe: {'the plain script' if argv[1] == '-c' else ' '.join(argv[1:4])} failed: {last}")
    return seconds, out.stdout


def _accuracy(summary: dict) -> str:
    """The run's test accuracy after its last epoch, and with test-time augmentation when the config asks for it."""
    acc = f"{summary['final_test_acc']:.2%}"
    return acc + (f" ({summary['final_test_acc_tta']:.2%} with 5 views)" if "final_test_acc_tta" in summary else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("ODENET_DATA_DIR"), required="ODENET_DATA_DIR" not in os.environ)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--config", default="configs/fast.yaml")
    args = p.parse_args()
    raw = Path(args.data_dir) / "MNIST" / "raw"
    if not (raw / split_files(True)[0]).is_file() or not os.access(raw, os.W_OK):
        sys.exit(f"fast_recipe: {raw} is not a writable folder with MNIST's .gz files (torchvision's layout)")
    env = {**os.environ, "ODENET_DATA_DIR": args.data_dir}
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            plain_s, acc = timed([sys.executable, "-c", PLAIN, args.data_dir, str(seed)], env)
            fast_s, _ = timed([sys.executable, "-m", "odenet", "train", "--config", args.config, "--seed", str(seed),
                               "--no-report", "--no-progress", "--out", out, "--name", f"s{seed}"], env)
            summary = json.loads((Path(out) / f"s{seed}" / "summary.json").read_text())
            rows.append((seed, plain_s, float(acc), fast_s, _accuracy(summary)))
            print(f"seed {seed}: plain epoch {plain_s:.1f} s ({float(acc):.2%}), {args.config} {fast_s:.1f} s "
                  f"({rows[-1][4]})", flush=True)
    import torch

    from odenet.bench.common import machine

    print(f"\n{machine(torch.device('cpu'))}, {time.strftime('%Y-%m-%d')}\n")
    print(f"| seed | plain torchdiffeq, 1 epoch: s | its test acc | {args.config}: s | its test acc | in plain epochs |")
    print("|---|---|---|---|---|---|")
    for seed, ps, pa, fs, fa in rows:
        print(f"| {seed} | {ps:.1f} | {pa:.2%} | {fs:.1f} | {fa} | {fs / ps:.2f} |")
    print(f"| median | {statistics.median(r[1] for r in rows):.1f} | | {statistics.median(r[3] for r in rows):.1f} | "
          f"| {statistics.median(r[3] / r[1] for r in rows):.2f} |")


if __name__ == "__main__":
    main()
