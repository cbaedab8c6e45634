"""The ``odenet`` command: train, evaluate, predict, demo, report, bench."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

from .config import Config, count, load_config_file
from .ode.tableaus import FIXED_METHODS, NATIVE_METHODS
from .errors import OdenetError


def _train_flags():
    """``--key value`` flags and ``--x``/``--no-x`` switches of every ``Config`` setting, help from its metadata."""
    types = {"int": int, "float": float, "str": str, "Optional[int]": int, "Optional[str]": str}
    flags, switches = [], []  # (flag, config key, type, help), (flag, config key, value it sets, help)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            for value, text in f.metadata["switches"].items():
                switches.append((flag if value else "--no-" + flag[2:], f.name, value, text))
        else:
            flags.append((flag, f.name, types[f.type], f.metadata["help"]))
    return flags, switches


TRAIN_FLAGS, TRAIN_SWITCHES = _train_flags()


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the Neural ODE (the seed's configuration by default)",
                       description="Train the Neural ODE classifier. Precedence: flags > --config file > defaults. "
                                   "Started by torchrun (torchrun --nproc-per-node N -m odenet train ...), every process "
                                   "trains its share of each batch with DistributedDataParallel; see docs/distributed.md.")
    p.add_argument("--config", help="YAML/TOML/JSON file with the same keys as the flags")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint (--epochs may extend it)")
    defaults = Config()
    for flag, key, typ, text in TRAIN_FLAGS:
        p.add_argument(flag, dest=key, type=typ, default=None, help=f"{text} (default: {getattr(defaults, key)})")
    for flag, key, value, text in TRAIN_SWITCHES:
        p.add_argument(flag, dest=key, action="store_const", const=value, default=None, help=text)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_common_eval(p) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--json", action="store_true", help="print JSON")


class _Parser(argparse.ArgumentParser):
    """argparse with odenet's one-line errors: ``odenet: error: ...`` and exit status 2, no usage dump."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"odenet: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="odenet", description="Neural ODE classifier for MNIST (adjoint method).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)

    model_help = ("run folder (its best.pt if chosen on a validation split, else last.pt) or checkpoint file; "
                  "default: the trained model shipped with odenet")
    p = sub.add_parser("evaluate", help="test accuracy, loss, NFE and per-class accuracy of a model")
    p.add_argument("--model", metavar="RUN_DIR|CHECKPOINT", help=model_help)
    p.add_argument("--data-dir", help="dataset folder (default: the run's, else $ODENET_DATA_DIR or the cache)")
    p.add_argument("--batch-size", type=count(1, 60_000), default=1000, help="batch size (default: 1000)")
    p.add_argument("--test-subset", type=count(1), default=None, help="evaluate a fixed random subset")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="test, or val: the validation split the model's run held out (default: test)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: classify each image by the softmax "
                                                      "averaged over it and its four one-pixel shifts (5 solves)")
    _add_common_eval(p)

    p = sub.add_parser("predict", help="classify your own images: photos, scans or drawings (top-3 classes)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", metavar="RUN_DIR|CHECKPOINT", help=model_help)
    p.add_argument("--top", type=count(1, 10), default=3, help="how many classes to show (default: 3)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: probabilities averaged over each image and "
                                                      "its four one-pixel shifts (5 solves; the 'not a digit' score "
                                                      "stays the image's own)")
    _add_common_eval(p)

    p = sub.add_parser("demo", help="a web page: draw or upload a digit and watch it flow through the ODE",
                       description="Serve the demo page (needs: pip install 'odenet-mnist[demo]').")
    p.add_argument("--model", metavar="RUN_DIR|CHECKPOINT", help=model_help)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=count(1, 65535), default=7860, help="port (default: 7860)")
    p.add_argument("--share", action="store_true", help="also ask Gradio for a public share link")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default: cpu)")

    p = sub.add_parser("report", help="six figures and report.html for a run")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--data-dir", help="dataset folder (default: the run's, else $ODENET_DATA_DIR or the cache)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--tsne-points", type=count(10, 10_000), default=2000, help="test images in the t-SNE panels (default: 2000)")

    p = sub.add_parser("export", help="the model as ONNX or torch.export (ODE unrolled on a fixed grid, checked "
                                      "on the test set), or its weights as safetensors")
    p.add_argument("--format", choices=("onnx", "torch-export", "safetensors"), default="onnx",
                   help="onnx (run by onnxruntime), torch-export (an ExportedProgram) or safetensors (weights and "
                        "config; default: onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (never overwritten)")
    p.add_argument("--model", metavar="RUN_DIR|CHECKPOINT", help=model_help)
    p.add_argument("--solver", choices=NATIVE_METHODS, default=None, metavar="{" + ",".join(FIXED_METHODS) + "}",
                   help="fixed-step method of the unrolled ODE (default: the coarsest grid that keeps the model's "
                        "answers on 99.9%% of the test set, measured as odenet bench invariance does)")
    p.add_argument("--steps", type=count(1, 1000), default=None, help="steps of the grid over [0, T]")
    p.add_argument("--data-dir", help="dataset folder (default: the run's, else $ODENET_DATA_DIR or the cache)")
    p.add_argument("--test-subset", type=count(1), default=None, help="check on a fixed random subset")
    p.add_argument("--device", default="cpu", help="where the check runs the PyTorch model (default: cpu)")

    from . import bench

    bench.add_parser(sub)
    return parser


def _train_config(args) -> Config:
    values: Dict = {}
    if args.config:
        values.update(load_config_file(args.config))
    for _, key, *_ in TRAIN_FLAGS + TRAIN_SWITCHES:
        v = getattr(args, key)
        if v is not None:
            values[key] = v
    return Config.from_dict(values).validate()


def cmd_train(args) -> int:
    from . import distributed
    from .device import resolve_device
    from .train import check_new_run, train

    try:
        cfg, run = _train_run(args)
    except OdenetError as e:
        if distributed.env_world_size() > 1 and os.environ.get("RANK", "0") != "0":
            e.quiet = True  # every rank reads the same flags and files: rank 0 says it once
        raise
    ctx = distributed.setup(resolve_device(cfg.device))
    try:
        if not args.resume:
            ctx.on_main(lambda: check_new_run(run))
        hooks = []
        if cfg.report and ctx.is_main:
            from .report import history_hook

            hooks.append(history_hook)
        progress = not args.no_progress and sys.stderr.isatty()
        summary = train(cfg, run, resume=bool(args.resume), progress=progress, hooks=hooks, ctx=ctx)
        distributed.barrier(ctx)  # rank 0 evaluates and saves the last epoch alone: the ranks leave together
    except RuntimeError as e:  # a collective whose peer died: one line instead of a traceback
        lost = distributed.lost_contact(e, ctx)
        if lost is None:
            raise
        raise lost from None
    finally:
        distributed.shutdown(ctx)
    if ctx.is_main:
        done = f"done: test accuracy after the last epoch {summary['final_test_acc']:.4f}"
        if "final_test_acc_tta" in summary:
            done += f" ({summary['final_test_acc_tta']:.4f} with test-time augmentation)"
        if "best_epoch" in summary:
            done += f"; best.pt is epoch {summary['best_epoch']} (validation accuracy {summary['best_val_acc']:.4f})"
        print(f"{done}; run folder {run}")
        if cfg.report:
            from .report import write_report

            print(f"report: {write_report(run)}")
    if ctx.active:
        distributed.leave(0)
    return 0


def _train_run(args):
    """The config and run folder of ``odenet train`` (a new run, or the saved config of ``--resume``)."""
    if args.resume:
        from .train import RESUME_MAY_CHANGE, resume_config

        given = {key: getattr(args, key) for _, key, *_ in TRAIN_FLAGS + TRAIN_SWITCHES if getattr(args, key) is not None}
        extra = [flag for flag, key, *_ in TRAIN_FLAGS + TRAIN_SWITCHES if key in given and key not in RESUME_MAY_CHANGE]
        if extra or args.config:
            flags = [flag for flag, key, *_ in TRAIN_FLAGS + TRAIN_SWITCHES if key in RESUME_MAY_CHANGE]
            raise OdenetError(f"--resume continues the run's saved config; only {', '.join(flags)} and --no-progress "
                              f"may change (got {', '.join(extra or ['--config'])})")
        return resume_config(Path(args.resume), given), Path(args.resume)
    cfg = _train_config(args)
    return cfg, cfg.run_folder()


def cmd_evaluate(args) -> int:
    from .checkpoint import open_model
    from .data import class_names
    from .evaluate import run_eval

    if args.split == "val" and args.test_subset is not None:
        raise OdenetError("--test-subset chooses test images: it does not go with --split val")
    m = open_model(args.model, args.device, test=args.split == "test", data_dir=args.data_dir,
                   test_subset=args.test_subset)
    cfg, state, ck_path = m.cfg, m.state, m.path
    names = class_names(cfg.dataset)
    split = m.test if args.split == "test" else m.val_split(args.data_dir)
    ev = run_eval(m.model, split, args.batch_size, len(names), tta=args.tta)
    result = {"split": args.split, "checkpoint": str(ck_path), "checkpoint_epoch": state["epoch"],
              "chosen_by": m.chosen_by, "dataset": cfg.dataset, "solver": cfg.solver, "n": ev["n"],
              "views": ev["views"],
              "accuracy": ev["acc"], "loss": ev["loss"], "nfe_mean": ev["nfe"],
              "images_per_s": ev["images_per_s"], "per_class_accuracy": dict(zip(names, ev["per_class_acc"]))}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        views = "; test-time augmentation: each image and its four one-pixel shifts" if args.tta else ""
        print(f"{cfg.dataset} {'test' if args.split == 'test' else 'validation'} set ({ev['n']} images); "
              f"{ck_path.name} after epoch {state['epoch']} ({m.chosen_by}); solver {cfg.solver}{views}")
        print(f"accuracy {ev['acc']:.4f}  loss {ev['loss']:.4f}  mean NFE {ev['nfe']:.1f}  {ev['images_per_s']:.0f} images/s")
        print("per-class accuracy: " + "  ".join(f"{n}: {a:.4f}" for n, a in zip(names, ev["per_class_acc"])))
    return 0


def cmd_predict(args) -> int:
    from .checkpoint import open_model
    from .data import class_names
    from .evaluate import predict
    from .ood import from_checkpoint
    from .images import prepare_image

    if args.top < 1 or args.top > 10:
        raise OdenetError("--top must be between 1 and 10")
    model, cfg, state, *_ = open_model(args.model, args.device)
    names = class_names(cfg.dataset)
    images, read, failed = [], [], 0
    for p in args.images:  # every file gets its answer or its one-line error; one bad file stops nothing
        try:
            images.append(prepare_image(p))
            read.append(p)
        except OdenetError as e:
            print(f"odenet: error: {e}", file=sys.stderr)
            failed += 1
    results = predict(model, images, cfg.dataset, args.top, from_checkpoint(state), tta=args.tta) if images else []
    if args.json:
        print(json.dumps([{"image": p, "top": [{"class": names[c], "probability": q} for c, q in r.top],
                           "ood_score": r.score, "ood_threshold": r.threshold,
                           "looks_like_a_digit": None if r.score is None else not r.looks_unlike_training_data}
                          for p, r in zip(read, results)], indent=2))
    else:
        for p, r in zip(read, results):
            flag = f"  ({r.verdict(cfg.dataset)})" if r.looks_unlike_training_data else ""
            print(f"{p}: " + ", ".join(f"{names[c]} {q:.3f}" for c, q in r.top) + flag)
    return 1 if failed else 0


def cmd_demo(args) -> int:
    from .checkpoint import resolve_path

    try:
        from .demo import serve
    except ImportError as e:
        raise OdenetError(f"the demo needs the demo extra ({e.name} is missing): "
                          "pip install 'odenet-mnist[demo]'") from None
    serve(str(resolve_path(args.model)), host=args.host, port=args.port, share=args.share, device=args.device)
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    out = write_report(Path(args.run), data_dir=args.data_dir, device=args.device, tsne_points=args.tsne_points)
    print(f"report: {out}")
    return 0


def cmd_export(args) -> int:
    from . import export, invariance
    from .checkpoint import open_model

    out = Path(args.out)
    if out.exists():
        raise OdenetError(f"{out} exists; odenet export never overwrites a file: remove it or choose another --out")
    if not out.parent.is_dir():
        raise OdenetError(f"no such folder: {out.parent}")
    if args.steps is not None and args.solver is None:
        raise OdenetError("--steps needs --solver (euler, midpoint or rk4)")
    if args.format == "safetensors":
        m = open_model(args.model, args.device)
        export.safetensors(m.model, m.cfg, out, m.state["epoch"])
        print(f"wrote {out}: the weights of {m.path} (after epoch {m.state['epoch']}) and its config")
        return 0
    m = open_model(args.model, args.device, test=True, data_dir=args.data_dir, test_subset=args.test_subset)
    method, steps = args.solver, args.steps
    if method is not None and method not in FIXED_METHODS:  # say which fixed grid keeps this model's answers
        best = invariance.sweep(m.model, m.test, adaptive=()).coarsest
        pick = (f"the coarsest that keeps this model's answers on {invariance.AGREEMENT:.1%} of the test set is "
                f"--solver {best.solver} --steps {best.steps}" if best is not None else
                "no fixed grid up to 16 steps keeps this model's answers: give --solver rk4 --steps N with N > 16")
        raise OdenetError(f"{method} is adaptive: its steps depend on the input, so it has no static graph; export a "
                          f"fixed grid: {pick}")
    if steps is None:
        sweep = invariance.sweep(m.model, m.test, fixed=(method,) if method else invariance.FIXED, adaptive=())
        best = sweep.coarsest
        if best is None:
            raise OdenetError(f"the model is {sweep.verdict()}; give --solver and --steps to export a grid anyway")
        method, steps = best.solver, best.steps
        print(f"grid: {best.label}, the coarsest whose answers match dopri5 at rtol 1e-7 on {best.agreement:.2%} "
              f"of {sweep.n} test digits")
    write = export.onnx if args.format == "onnx" else export.torch_export
    write(m.model, out, method, steps)
    res = export.check(export.runner(out, args.format), m.model, m.test)
    engine = "onnxruntime" if args.format == "onnx" else "torch.export"
    print(f"wrote {out}: {m.path.name} with its ODE unrolled on {method} × {steps} steps; input images (batch, 1, 28, "
          f"28) as odenet.preprocess returns them, output class probabilities (batch, {m.model.classifier[-1].out_features})")
    print(f"{engine} on {res['n']} test digits: accuracy {res['exported_accuracy']:.4f} (PyTorch model: "
          f"{res['torch_accuracy']:.4f}), same answer as the PyTorch model on {res['agreement']:.2%}, largest "
          f"probability difference {res['max_probability_difference']:.2g}")
    if res["agreement"] < invariance.AGREEMENT:
        raise OdenetError(f"the exported graph keeps the model's answers on only {res['agreement']:.2%} "
                          f"(< {invariance.AGREEMENT:.1%}); {out} is written but not fit to ship: try more --steps")
    return 0


def _empty_value(argv: List[str]) -> Optional[str]:
    """The option (or "an argument") given an empty string: ``--model ''`` would otherwise read as not given and
    fall back to a default (the shipped model, the default data folder) without a word."""
    for i, tok in enumerate(argv):
        if tok == "":
            before = argv[i - 1] if i else ""
            return before if before.startswith("-") else "an argument"
        if tok.startswith("--") and tok.endswith("=") and len(tok) > 3:
            return tok[:-1]
    return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    empty = _empty_value(argv)
    if empty is not None:
        print(f"odenet: error: {empty} was given an empty value", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "report": cmd_report,
                "demo": cmd_demo, "export": cmd_export}
    try:
        if args.command == "bench":
            from . import bench

            return bench.run(args)
        return commands[args.command](args)
    except OdenetError as e:
        if not e.quiet:
            print(f"odenet: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("odenet: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions, ...: the checkpoints already written are intact
        print(f"odenet: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
