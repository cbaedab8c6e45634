"""The accuracies README and docs/accuracy.md quote agree with the per-epoch records in docs/runs they came from.

Each claim names the text it reads (a table row by its first cell, or a sentence by a pattern) and the runs
behind it; the test fails if the text is gone or reworded (update the claim with it), if a number differs from
its run's last epoch, or if a quoted mean +- std is not the runs' mean and sample standard deviation.
"""
import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "docs" / "runs"
NUM = r"(\d+(?:\.\d+)?)"


def last(run: str, key: str = "test_acc") -> float:
    lines = (RUNS / f"{run}.metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])[key]


def row(md: str, label: str) -> list:
    """Cells of the first table row whose first cell (bold removed) starts with ``label``."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].replace("*", "").startswith(label):
            return cells
    raise AssertionError(f"no table row starting with {label!r}")


def percents(cell: str) -> list:
    return [float(x) for x in re.findall(r"(\d+\.\d+)%", cell)]


def mean_std(cell: str):
    m = re.search(r"(\d+\.\d+)% ± (\d+\.\d+)", cell)
    assert m, cell
    return float(m.group(1)), float(m.group(2))


def check(values, runs, stats=None, key="test_acc"):
    records = [100 * last(r, key) for r in runs]
    assert values == pytest.approx([round(r, 2) for r in records], abs=0.006), (values, runs)
    if stats is not None:
        mean, std = stats
        assert mean == pytest.approx(statistics.mean(records), abs=0.006), (stats, runs)
        assert std == pytest.approx(statistics.stdev(records), abs=0.006), (stats, runs)


SEEDS = ["{}-seed0", "{}-seed1", "{}-seed2"]


def seeds(name):
    return [s.format(name) for s in SEEDS]


ACCURACY_ROWS = [  # (first cell, runs of the per-seed cell); the mean +- std cell is checked too
    ("seed configuration", ["mnist-default", "mnist-default-seed1", "mnist-default-seed2"]),
    ("recipe v1 |", seeds("mnist-best")),
    ("recipe v2", seeds("mnist-best256")),
    ("recipe v3", seeds("mnist-v3")),
    ("v4 + kinetic 0.01", seeds("mnist-v4-ke01")),
    ("recipe v5", seeds("mnist-v5")),
    ("MNIST recipe v2 (15 epochs)", seeds("fashion-best")),
    ("`configs/fashion.yaml`", seeds("fashion-recipe")),
]


@pytest.mark.parametrize("label, runs", ACCURACY_ROWS, ids=[r[0] for r in ACCURACY_ROWS])
def test_accuracy_md_result_rows(label, runs):
    md = (ROOT / "docs" / "accuracy.md").read_text()
    cells = row(md, label.rstrip(" |"))
    per_seed = next(c for c in cells if len(percents(c)) == 3)
    stats = next(c for c in cells if "±" in c)
    check(percents(per_seed), runs, mean_std(stats))


def test_accuracy_md_special_rows():
    md = (ROOT / "docs" / "accuracy.md").read_text()
    v4 = row(md, "recipe v4")
    check(percents(v4[3])[:3], ["mnist-v4-seed0", "mnist-v4-seed1-alone", "mnist-v4-seed2-alone"], mean_std(v4[4]))
    check(percents(v4[3])[3:], ["mnist-v4-seed1", "mnist-v4-seed2"])  # one thread, side by side
    lever = {r: row(md, r) for r in ("2", "3", "4", "5", "8")}
    for r, run in (("2", "a1"), ("3", "a2"), ("4", "a3"), ("5", "a4")):
        check(percents(lever[r][3]), seeds(f"mnist-add-{run}"), mean_std(lever[r][4]))
    check(percents(lever["8"][3]), seeds("mnist-v4"), mean_std(lever["8"][4]))
    fashion_seed = row(md, "seed configuration (10 epochs)")
    check(percents(fashion_seed[2]), seeds("fashion-default"), mean_std(fashion_seed[3]))


def test_accuracy_md_v6_row_and_seeds():
    """Recipe v6's eight seeds (its row) and the five-seed sentence of the best recipe's goal."""
    md = (ROOT / "docs" / "accuracy.md").read_text()
    cells = row(md, "recipe v6 = ")
    check(percents(cells[3]), [f"mnist-v6-seed{s}" for s in range(11)], mean_std(cells[4]))
    runs = [f"mnist-v6-seed{s}" for s in range(6)]
    m = re.search(rf"\*\*{NUM}, {NUM}, {NUM}, {NUM}, {NUM},\s+{NUM}%\*\*\. Over seeds 0–4 \(the five of the goal\): \*\*mean {NUM}% ± {NUM},",
                  " ".join(md.split()))
    assert m, "the six-seed sentence of docs/accuracy.md is gone or reworded"
    values = [float(v) for v in m.groups()]
    check(values[:6], runs)
    check(values[:5], runs[:5], (values[6], values[7]))
    assert min(values[:5]) >= 99.50
    m = re.search(rf"--seed S --no-report`, two at a time, one thread each\) it gives \*\*{NUM}, {NUM}, {NUM}, {NUM}%\*\* "
                  rf"against v6's {NUM}, {NUM}, {NUM}, {NUM}%", " ".join(md.split()))
    values = [float(v) for v in m.groups()]
    check(values[:4], [f"mnist-v6-ema999-seed{s}" for s in range(4)])
    check(values[4:], runs[:4])
    m = re.search(rf"--seed 0 --no-report`\): \*\*{NUM}% in 8 min 34 s\*\*", " ".join(md.split()))
    check([float(m.group(1))], ["mnist-v6-seed0-alone"])


VALIDATION_ROWS = [("v3 |", "mnist-val-v3-seed0"), ("v3 + elastic distortion", "mnist-val-elastic15-seed0"),
                   ("v3, last 2 epochs plain", "mnist-val-off2-seed0"), ("v3, last 4 epochs plain", "mnist-val-off4-seed0"),
                   ("v3, last 6 epochs plain", "mnist-val-off6-seed0"), ("v3, last 8 epochs plain", "mnist-val-off8-seed0"),
                   ("v4 + kinetic 1e-5", "mnist-val-ke1e5-seed0"), ("v4 + kinetic 1e-4", "mnist-val-ke1e4-seed0"),
                   ("v4 + kinetic 0.003", "mnist-val-ke003-seed0"), ("v4 + kinetic 0.01 |", "mnist-val-ke01-seed0"),
                   ("v5 (16 epochs", "mnist-val-ke1e4-seed0"), ("v5 for 30 epochs, the last 4 plain", "mnist-val-e30-seed0"),
                   ("v5 for 30 epochs, the last 6 plain", "mnist-val-e30off6-seed0"),
                   ("v6 + weight decay 0.1", "mnist-val-e30wd01-seed0"), ("v6 + stronger augmentation", "mnist-val-e30aug15-seed0"),
                   ("v6 + learning rate 6e-3", "mnist-val-e30lr006-seed0"), ("v6 + EMA decay 0.999", "mnist-val-e30ema999-seed0")]


@pytest.mark.parametrize("label, run", VALIDATION_ROWS, ids=[r[0] for r in VALIDATION_ROWS])
def test_accuracy_md_validation_rows(label, run):
    """The choice on the validation split: validation accuracy and loss, and the test accuracy beside them."""
    md = (ROOT / "docs" / "accuracy.md").read_text()
    lines = [line for line in md.splitlines() if "--val-size 5000" in line]
    cells = row("\n".join(lines), label.rstrip(" |"))
    check([percents(cells[2])[0]], [run], key="val_acc")
    assert float(cells[3].strip("*")) == pytest.approx(last(run, "val_loss"), abs=0.00006)
    check([percents(cells[5])[0]], [run])


def test_readme_quotes():
    md = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(rf"\| `odenet train` \| \*\*{NUM}%\*\*", md)
    check([float(m.group(1))], ["mnist-default"])
    m = re.search(rf"Seeds 1 and 2 \(`odenet train --seed S`\) gave {NUM}% and {NUM}% \(mean of the three {NUM}% ± {NUM}\)",
                  md)
    check([float(m.group(1)), float(m.group(2))], ["mnist-default-seed1", "mnist-default-seed2"])
    runs = ["mnist-default", "mnist-default-seed1", "mnist-default-seed2"]
    check([100 * round(last(r), 4) for r in runs], runs, (float(m.group(3)), float(m.group(4))))
    m = re.search(rf"\*\*{NUM}%, {NUM}%, {NUM}%\*\* after the last epoch for seeds 0, 1, 2 \(mean \*\*{NUM}% ± {NUM}\*\*",
                  md)
    check([float(m.group(i)) for i in (1, 2, 3)], seeds("mnist-v5"), (float(m.group(4)), float(m.group(5))))
    m = re.search(rf"\*\*{NUM}%, {NUM}%, {NUM}%, {NUM}%, {NUM}%, {NUM}%\*\* after the last epoch for seeds 0–5 "
                  rf"\(mean \*\*{NUM}% ± {NUM}\*\*, none under 99.5%", md)
    runs = [f"mnist-v6-seed{s}" for s in range(6)]
    check([float(m.group(i)) for i in range(1, 7)], runs, (float(m.group(7)), float(m.group(8))))
    m = re.search(rf"8 min 34 s per run alone .*? without the report: {NUM}% with two threads\)", md)
    check([float(m.group(1))], ["mnist-v6-seed0-alone"])
    m = re.search(rf"99.5%, which the 30 epochs lift to {NUM}% \(seed 4\) and {NUM}% ± {NUM} over the same five", md)
    check([float(m.group(1))], ["mnist-v6-seed4"])
    records = [100 * last(f"mnist-v6-seed{s}") for s in range(5)]
    assert float(m.group(2)) == pytest.approx(statistics.mean(records), abs=0.006)
    assert float(m.group(3)) == pytest.approx(statistics.stdev(records), abs=0.006)
    m = re.search(rf"`odenet train --config configs/fashion.yaml` .*? gives \*\*{NUM}%, {NUM}%, {NUM}%\*\* \({NUM}% ± {NUM},",
                  md)
    check([float(m.group(i)) for i in (1, 2, 3)], seeds("fashion-recipe"), (float(m.group(4)), float(m.group(5))))
    m = re.search(rf"against the seed configuration's {NUM}% ± {NUM}", md)
    runs = seeds("fashion-default")
    check([100 * round(last(r), 4) for r in runs], runs, (float(m.group(1)), float(m.group(2))))


def test_accuracy_md_five_seeds_of_the_best_recipe():
    md = (ROOT / "docs" / "accuracy.md").read_text()
    m = re.search(rf"Over seeds 0–4 the recipe gives {NUM}, {NUM}, {NUM}, {NUM}, {NUM}%: \*\*mean {NUM}% ± {NUM},", md)
    assert m, "the five-seed sentence of docs/accuracy.md is gone or reworded"
    values = [float(v) for v in m.groups()]
    check(values[:5], [f"mnist-v5-seed{s}" for s in range(5)], (values[5], values[6]))


def tta(record: str, models, views: str = "5 views (--tta)") -> list:
    """Accuracies (percent) of ``models`` with ``views`` in the test-time augmentation record ``record``."""
    rows = {r["model"]: r["accuracy"] for r in json.loads((RUNS / record).read_text())}
    return [rows[m][views] for m in models]


V6 = [f"mnist-v6-seed{s}" for s in range(11)]
VIEWS = ("1 view", "5 views (--tta)", "9 views")


def test_tta_records_match_the_runs_and_the_docs_tables():
    md = (ROOT / "docs" / "accuracy.md").read_text()
    assert tta("mnist-v6-tta.json", V6, "1 view") == [round(100 * last(r), 2) for r in V6]  # the same models
    # the runs that reported their own test-time augmentation (tta: true) agree with the benchmark on their checkpoints
    own = ["mnist-v6-seed8", "mnist-v6-seed9", "mnist-v6-seed10"]
    assert tta("mnist-v6-tta.json", own) == [round(100 * last(r, "test_acc_tta"), 2) for r in own]
    windows = [statistics.mean(tta("mnist-v6-tta.json", V6[i:i + 5])) for i in range(len(V6) - 4)]
    assert sum(round(w, 2) >= 99.60 for w in windows) == 6 and round(min(windows), 2) == 99.58  # as the section says
    cells = row(md, "recipe v6 with test-time augmentation")
    values = percents(cells[3])
    assert values == tta("mnist-v6-tta.json", V6)
    mean, std = mean_std(cells[4])
    assert (mean, std) == (round(statistics.mean(values), 2), round(statistics.stdev(values), 2))
    m = re.search(rf"seeds 0–4: {NUM}% ± {NUM}\)", cells[4])
    assert (float(m.group(1)), float(m.group(2))) == (round(statistics.mean(values[:5]), 2),
                                                      round(statistics.stdev(values[:5]), 2))
    val = json.loads((RUNS / "mnist-val-tta.json").read_text())
    for label, r in (("v6 (`mnist-val-e30-seed0`)", val[0]), ("v5 for 30 epochs, the last 6 plain |", val[1]),
                     ("v6 + weight decay 0.1 |", val[2]), ("v6 + stronger augmentation |", val[3]),
                     ("v6 + learning rate 6e-3 |", val[4]), ("v6 + EMA decay 0.999 |", val[5])):
        lines = [line for line in md.splitlines() if line.count("|") == 5]  # the 4-column validation table
        cells = row("\n".join(lines), label.rstrip(" |"))
        assert [percents(c)[0] for c in cells[1:4]] == [r["accuracy"][v] for v in VIEWS], label
        assert r["split"] == "val" and r["n"] == 5000
        assert r["accuracy"]["1 view"] == round(100 * last(r["model"], "val_acc"), 2)
    gains = [statistics.mean(r["accuracy"][v] - r["accuracy"]["1 view"] for r in val) for v in VIEWS[1:]]
    cells = row(md, "mean gain over 1 view")
    assert [float(x) for x in re.findall(r"\+(\d\.\d+) pp", " ".join(cells))] == [round(g, 3) for g in gains]
    assert gains[0] > gains[1]  # what chose five views
    seeds_row = row(md, "v6 seeds 0–10")
    for cell, v in zip(seeds_row[1:4], VIEWS):
        assert [float(x) for x in re.findall(r"\d+\.\d+", cell)] == tta("mnist-v6-tta.json", V6, v), v
    ema = [f"mnist-v6-ema999-seed{s}" for s in range(4)]
    ema_row = row(md, "v6 + EMA 0.999, seeds 0–3")
    for cell, v in zip(ema_row[1:4], VIEWS):
        assert [float(x) for x in re.findall(r"\d+\.\d+", cell)] == tta("mnist-v6-tta.json", ema, v), v
    text = " ".join(md.split())
    m = re.search(rf"seeds 0–4 give \*\*{NUM}, {NUM}, {NUM}, {NUM}, {NUM}%, mean {NUM}% ± {NUM}\*\* \({NUM} before "
                  rf"rounding\), the weakest seed {NUM}%; all eleven seeds: {NUM}% ± {NUM}\. One view gives {NUM}% \(seeds 0–4\) "
                  rf"and {NUM}% \(all eleven\)", text)
    assert m, "the goal sentence of the test-time augmentation section is gone or reworded"
    g = [float(x) for x in m.groups()]
    five = tta("mnist-v6-tta.json", V6[:5])
    assert g[:5] == five and g[5:7] == [round(statistics.mean(five), 2), round(statistics.stdev(five), 2)]
    assert g[7] == pytest.approx(statistics.mean(five), abs=1e-9) and g[7] >= 99.60 and g[8] == min(five) >= 99.50
    every = tta("mnist-v6-tta.json", V6)
    assert g[9:11] == [round(statistics.mean(every), 2), round(statistics.stdev(every), 2)]
    assert g[11:13] == [round(statistics.mean(100 * last(r) for r in runs), 2) for runs in (V6[:5], V6)]


def test_readme_quotes_tta():
    md = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(rf"seeds 0–10, \*\*{', '.join([NUM + '%'] * 11)}\*\* \(seeds 0–4: mean \*\*{NUM}% ± {NUM}\*\*, none "
                  rf"under 99.5%; all eleven: {NUM}% ± {NUM}; one view, seeds 0–10: {NUM}% ± {NUM}, seeds 6–10 at "
                  rf"{', '.join([NUM + '%'] * 5)}\)", md)
    assert m, "README's test-time augmentation sentence is gone or reworded"
    g = [float(x) for x in m.groups()]
    every = tta("mnist-v6-tta.json", V6)
    assert g[:11] == every and min(every[:5]) >= 99.5
    assert g[11:13] == [round(statistics.mean(every[:5]), 2), round(statistics.stdev(every[:5]), 2)]
    assert g[13:15] == [round(statistics.mean(every), 2), round(statistics.stdev(every), 2)]
    one = [100 * last(r) for r in V6]
    assert g[15:17] == [round(statistics.mean(one), 2), round(statistics.stdev(one), 2)]
    assert g[17:] == [round(v, 2) for v in one[6:]]


def test_performance_md_quotes_the_fast_recipes_view_choice():
    """The validation numbers that chose five views for configs/fast.yaml are its record's."""
    text = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    m = re.search(rf"one view {NUM} / {NUM} / {NUM}%, five views {NUM} / {NUM} / {NUM}% \(mean gain \+{NUM} pp; nine "
                  rf"views \+{NUM} pp", text)
    assert m, "the sentence on the fast recipe's test-time views is gone or reworded"
    g = [float(x) for x in m.groups()]
    val = json.loads((RUNS / "mnist-fast-val-tta.json").read_text())
    assert [r["model"] for r in val] == [f"mnist-fast-val-seed{s}" for s in range(3)]
    assert all(r["split"] == "val" and r["n"] == 5000 for r in val)
    assert g[:3] == [r["accuracy"]["1 view"] for r in val] and g[3:6] == [r["accuracy"]["5 views (--tta)"] for r in val]
    gains = [statistics.mean(r["accuracy"][v] - r["accuracy"]["1 view"] for r in val) for v in VIEWS[1:]]
    assert g[6:] == [round(x, 3) for x in gains]
