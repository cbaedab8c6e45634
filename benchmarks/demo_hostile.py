"""The demo under hostile requests: a normal request behind N at the top of the budget, and the server's memory.

    python benchmarks/demo_hostile.py [--heavy 4] [--repeats 3]

Starts ``odenet demo`` (the shipped model) in a child process (``demo_load.start_server``); each repeat sends
``--heavy`` requests at the top of the per-request budget (dopri5, rtol = atol = 1e-7, T = 4) from their own
clients, then a normal one (the page's defaults); then a 144-megapixel PNG as the sketch. Prints the normal
request's latency, the heavy ones', the server's peak memory (VmHWM) before and after the big sketch, and what the
page said to out-of-budget requests (step 1e-9, rtol 1e-14).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_load import digit_png, free_port, start_server  # noqa: E402

NORMAL = ["dopri5", 1e-3, 1e-4, 0.1, 1.0]
HEAVY = ["dopri5", 1e-7, 1e-7, 0.1, 4.0]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_upload(url: str, path: Path, settings, out: list) -> None:
    from gradio_client import Client, handle_file

    c = Client(url, verbose=False, download_files=tempfile.mkdtemp(dir=path.parent))  # inside the work folder
    t0 = time.perf_counter()
    status = c.predict(handle_file(str(path)), *settings, api_name="/on_upload")[-3]
    out.append((time.perf_counter() - t0, status))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heavy", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    import torch

    from odenet.bench.common import machine

    work = Path(tempfile.mkdtemp(prefix="odenet-hostile-"))
    seven = digit_png(work, 7)
    port = free_port()
    proc = start_server(port, work / "server.log")
    url = f"http://127.0.0.1:{port}/"
    normal, heavy = [], []
    try:
        for _ in range(a.repeats):
            threads = [threading.Thread(target=timed_upload, args=(url, seven, HEAVY, heavy)) for _ in range(a.heavy)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            timed_upload(url, seven, NORMAL, normal)
            for t in threads:
                t.join()
        refusals = []
        for settings in (["euler", 1e-3, 1e-4, 1e-9, 1.0], ["dopri5", 1e-14, 1e-14, 0.1, 4.0]):
            timed_upload(url, seven, settings, refusals)
        before = peak_rss_mb(proc.pid)
        big = work / "huge.png"
        Image.new("L", (12_000, 12_000), 255).save(big, optimize=True)
        from gradio_client import Client, handle_file

        c = Client(url, verbose=False, download_files=tempfile.mkdtemp(dir=work))
        t0 = time.perf_counter()
        said = c.predict({"background": None, "layers": [], "composite": handle_file(str(big))}, *NORMAL,
                         api_name="/on_sketch")[-3]
        big_s = time.perf_counter() - t0
        after = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{machine(torch.device('cpu'))}; {a.repeats} x ({a.heavy} heavy + 1 normal) requests")
    print("| request | n | median s | max s |")
    print("|---|---|---|---|")
    for name, rows in (("normal, behind the heavy ones", normal), ("heavy (rtol = atol = 1e-7, T = 4)", heavy)):
        lat = [s for s, _ in rows]
        print(f"| {name} | {len(lat)} | {statistics.median(lat):.2f} | {max(lat):.2f} |")
    print(f"server peak memory: {before:.0f} MB before the 144-megapixel sketch, {after:.0f} MB after "
          f"({big_s:.2f} s; the page said: {said.strip()})")
    for s, status in refusals:
        print(f"out of budget ({s:.2f} s): {status.strip()}")


if __name__ == "__main__":
    main()
