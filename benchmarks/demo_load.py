"""The demo under load: N concurrent clients, each sending R requests through ``gradio_client``.

    python benchmarks/demo_load.py [--clients 16] [--requests 10] [--mode mixed|identical]

Starts ``odenet demo`` (the shipped model) on a free port in a child process, with its log in a file; each client
thread holds its own ``gradio_client.Client`` (its own session) and sends, in turn, an upload, a sketch and a
solver change. ``identical``: every client sends the same digit (the same output images, at the same time);
``mixed``: each client its own digit, sketches and uploads mixed with solver changes. Every reply's images are
downloaded (what a browser does). Prints requests, failures, tracebacks in the server log and latency
percentiles. ``load`` is also what ``tests/test_demo_load.py`` runs, smaller.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image, ImageDraw

SOLVERS = ["dopri5", "rk4", "bosh3", "midpoint"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digit_png(folder: Path, k: int) -> Path:
    """A drawn digit-like stroke (dark on white, 280x280, the pad's size), different for each ``k``."""
    im = Image.new("RGB", (280, 280), "white")
    d = ImageDraw.Draw(im)
    rng = np.random.default_rng(k)
    pts = [(int(x), int(y)) for x, y in rng.integers(50, 230, size=(4, 2))]
    d.line(pts, fill="black", width=18, joint="curve")
    p = folder / f"digit{k}.png"
    im.save(p)
    return p


def start_server(port: int, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "odenet", "demo", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo exited with {proc.returncode}: {log_path.read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the demo did not start within 120 s")


def client_run(url: str, files: List[Path], requests: int, mode: str, k: int, results: List[Dict]) -> None:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=tempfile.mkdtemp(dir=files[0].parent))  # inside load's workdir
    settings = ["dopri5", 1e-3, 1e-4, 0.1, 1.0]
    for r in range(requests):
        f = files[0] if mode == "identical" else files[(k + r) % len(files)]
        kind = "upload" if mode == "identical" else ("upload", "sketch", "solver")[r % 3]
        t0 = time.perf_counter()
        try:
            if kind == "upload":
                out = client.predict(handle_file(str(f)), *settings, api_name="/on_upload")
            elif kind == "sketch":
                value = {"background": None, "layers": [], "composite": handle_file(str(f))}
                out = client.predict(value, *settings, api_name="/on_sketch")
            else:  # a solver change re-renders the last image of this session
                settings[0] = SOLVERS[(k + r) % len(SOLVERS)]
                out = client.predict(*settings, api_name="/on_settings")
            status = out[-3]
            ok = "function evaluations" in status and all(Path(p).is_file() for p in out[-2:])
            results.append({"kind": kind, "ok": ok, "s": time.perf_counter() - t0,
                            "error": "" if ok else f"unexpected reply: {status!r}"})
        except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the others
            results.append({"kind": kind, "ok": False, "s": time.perf_counter() - t0,
                            "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})


def load(clients: int, requests: int, mode: str, workdir: Path) -> Dict:
    """Run the load against a fresh server; returns counts, latencies (s) and the server log's tracebacks."""
    port = free_port()
    log_path = workdir / "server.log"
    files = [digit_png(workdir, k) for k in range(max(1, clients))]
    proc = start_server(port, log_path)
    results: List[Dict] = []
    try:
        threads = [threading.Thread(target=client_run, args=(f"http://127.0.0.1:{port}/", files, requests, mode, k,
                                                               results)) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log = log_path.read_text(errors="replace")
    lat = sorted(r["s"] for r in results)
    return {"requests": len(results), "failed": sum(not r["ok"] for r in results),
            "errors": sorted({r["error"] for r in results if not r["ok"]}),
            "tracebacks": log.count("Traceback"), "log": log, "wall": wall,
            "p50": statistics.median(lat) if lat else float("nan"),
            "p95": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else float("nan"),
            "max": lat[-1] if lat else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=10)
    p.add_argument("--mode", choices=("mixed", "identical"), default="mixed")
    a = p.parse_args()
    import torch

    from odenet.bench.common import machine

    with tempfile.TemporaryDirectory() as d:
        r = load(a.clients, a.requests, a.mode, Path(d))
    print(f"{machine(torch.device('cpu'))}; {a.clients} clients x {a.requests} requests, {a.mode} inputs")
    print("| requests | failed | tracebacks in the server log | p50 s | p95 s | max s | wall s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {r['requests']} | {r['failed']} | {r['tracebacks']} | {r['p50']:.2f} | {r['p95']:.2f} | {r['max']:.2f} "
          f"| {r['wall']:.1f} |")
    for e in r["errors"]:
        print("failure:", e)
    if r["tracebacks"]:
        print(r["log"][-3000:])
    sys.exit(1 if r["failed"] or r["tracebacks"] else 0)


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    main()
