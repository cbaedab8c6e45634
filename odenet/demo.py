"""``odenet demo``: one web page (Gradio) to draw or upload a digit and watch it flow through the ODE.

The page shows what the model sees (``odenet.preprocess``, the same function as ``odenet predict``), the
probabilities of the ten classes, the NFE and time of the prediction, the decision along the flow (the
classifier applied to z(t) for t in [0, T]) and the digit's path over the PCA map of test digits' paths, with
solver controls applied at once. Every handler turns bad input into a message on the page, never a traceback.
"""
from __future__ import annotations

import atexit
import hashlib
import io
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch

from .config import Config
from .data import class_names, normalize
from .errors import OdenetError
from .files import write_once
from .flow import Flow, FlowMap, decision_along_flow, last_change
from . import ood
from .model import NeuralODEModel
from .ode import NATIVE_METHODS
from .ood import OODDetector, logits_and_features

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before Gradio is imported: no calls home
HINT = "Draw a digit on the pad, or upload a photo or scan of one."
# Every request's work is bounded (the page states these): tolerances, step and T within ranges, and a cap on
# the solver's steps, so one request costs at most about a second and cannot exhaust memory.
LIMITS = {"rtol": (1e-7, 1.0), "atol": (1e-7, 1.0), "step size": (1e-3, 1.0), "T": (0.1, 4.0)}
MAX_STEPS = 2_000  # per solve: an adaptive method's steps, or a fixed grid's (refused before it is built)
MAX_UPLOAD = "10mb"  # per uploaded file (Gradio refuses larger ones before storing them)
QUEUE_SIZE = 16  # requests waiting at most; more are turned away at once instead of waiting for minutes
CACHE_CLEANUP = (600, 3600)  # every 10 minutes, delete Gradio's cached files older than an hour
SOLVERS = list(NATIVE_METHODS)
log = logging.getLogger("odenet.demo")


class Predictor:
    """The model, its class names and flow map, and the rendering of one prediction (no Gradio inside).

    Safe to call from many request threads: one lock serialises the model and the two cached figures, and the
    images the page serves are files named by their content, written once (atomically) into ``out_dir`` and
    never rewritten, so a reply streaming one of them can't see it change under it when another request
    produces the same picture.
    """

    def __init__(self, model: NeuralODEModel, dataset: str, fmap: Optional[FlowMap], out_dir: Optional[Path] = None,
                 detector: Optional[OODDetector] = None, cfg: Optional[Config] = None):
        self.model, self.dataset, self.fmap, self.detector = model.eval(), dataset, fmap, detector
        self.cfg = cfg if cfg is not None else Config()  # the page's solver settings start at the model's own
        self.names = class_names(dataset)
        self.device = next(model.parameters()).device
        self._flow_fig = self._path_fig = None
        self._backgrounds: Dict[int, object] = {}
        self._out_dir = Path(out_dir) if out_dir is not None else None
        self.lock = threading.Lock()

    @property
    def out_dir(self) -> Path:
        """Where the page's images go: the folder given, else a temp folder made when first asked for (so a
        Predictor that never serves an image leaves nothing behind); ``serve`` removes it at exit."""
        if self._out_dir is None:
            self._out_dir = Path(tempfile.mkdtemp(prefix="odenet-demo-"))
        return self._out_dir

    @out_dir.setter
    def out_dir(self, path) -> None:
        self._out_dir = Path(path)

    def image_file(self, image: np.ndarray) -> str:
        """A PNG file of ``image`` (grey or RGB uint8), named by its content and written once."""
        data = png_bytes(image)
        return str(write_once(self.out_dir, hashlib.sha256(data).hexdigest()[:40] + ".png", data))

    def render(self, image: np.ndarray, solver: str, rtol: float, atol: float, step: float,
               t_end: float) -> Tuple[Flow, Optional[float], str, str]:
        """The flow of ``image``, its OOD score and its two figures as files: ``(flow, score, flow png, path png)``."""
        with self.lock:
            flow = self.flow(image, solver, rtol, atol, step, t_end)
            score = self.ood_score(image)
            figs = self.flow_figure(flow), self.path_figure(flow)
        return (flow, score, *map(self.image_file, figs))

    def flow(self, image: np.ndarray, solver: str, rtol: float, atol: float, step: float, t_end: float) -> Flow:
        """The flow of a 28x28 uint8 image under the given solver settings."""
        if solver not in SOLVERS:
            raise OdenetError(f"unknown solver {solver!r}")
        for name, v in (("rtol", rtol), ("atol", atol), ("step size", step), ("T", t_end)):
            lo, hi = LIMITS[name]
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) \
                    or not lo <= v <= hi:
                raise OdenetError(f"{name} must be a number from {lo:g} to {hi:g}")
        x = self._input(image)
        return decision_along_flow(self.model, x, t_end=t_end, method=solver, rtol=rtol, atol=atol, step_size=step,
                                   max_steps=MAX_STEPS)

    def _input(self, image: np.ndarray) -> torch.Tensor:
        return normalize(torch.from_numpy(image[None]), self.dataset).to(self.device)

    def ood_score(self, image: np.ndarray) -> Optional[float]:
        """``odenet.ood``'s score of a 28x28 uint8 image under the model's own solver, or None without statistics."""
        if self.detector is None:
            return None
        return float(self.detector.score(logits_and_features(self.model, self._input(image))[1])[0])

    def probabilities(self, flow: Flow) -> Dict[str, float]:
        return {n: float(p) for n, p in zip(self.names, flow.final)}

    # The two figures are built once; per prediction only their moving lines are drawn over a cached rendering
    # of the rest (blitting): a new matplotlib figure per prediction is slow (docs/performance.md).
    def flow_figure(self, flow: Flow) -> np.ndarray:
        """Each class's probability along t (the classifier applied to z(t)), as an RGB image."""
        if self._flow_fig is None:
            self._flow_fig = self._make_flow_figure()
        fig, ax, lines = self._flow_fig
        top3 = set(np.argsort(-flow.final)[:3].tolist())
        for c, line in enumerate(lines):
            line.set_data(flow.ts, flow.probs[:, c])
            line.set_linewidth(2.4 if c in top3 else 1.0)
            line.set_alpha(1.0 if c in top3 else 0.45)
        if ax.get_xlim() != (flow.ts[0], flow.ts[-1]):
            ax.set_xlim(flow.ts[0], flow.ts[-1])
            self._backgrounds.pop(id(fig), None)  # new ticks: draw the static part again
        return self._blit(fig, lines)

    def _blit(self, fig, dynamic) -> np.ndarray:
        """Draw only ``dynamic`` artists over a cached rendering of the rest of ``fig``; return RGB pixels."""
        canvas = fig.canvas
        if id(fig) not in self._backgrounds:
            for a in dynamic:
                a.set_visible(False)
            canvas.draw()
            self._backgrounds[id(fig)] = canvas.copy_from_bbox(fig.bbox)
            for a in dynamic:
                a.set_visible(True)
        canvas.restore_region(self._backgrounds[id(fig)])
        for a in dynamic:
            fig.draw_artist(a)
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()

    def _make_flow_figure(self):
        from .figures import COLORS, plt  # figures sets the Agg backend

        fig, ax = plt.subplots(figsize=(5.4, 3.4), dpi=80)
        lines = [ax.plot([], [], color=COLORS[c % 10], label=self.names[c][:10])[0] for c in range(len(self.names))]
        ax.set(xlabel="t", ylabel="probability", ylim=(-0.02, 1.02), xlim=(0, 1))
        ax.set_title("Decision along the flow: classifier(z(t))", fontsize=10)
        ax.grid(alpha=0.25)
        ax.legend(ncol=5, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)
        fig.tight_layout()
        return fig, ax, lines

    def path_figure(self, flow: Flow) -> np.ndarray:
        """This digit's path z(t) over the map of test digits' paths (coloured by class), as an RGB image."""
        if self._path_fig is None:
            self._path_fig = self._make_path_figure()
        fig, line, start, end = self._path_fig
        if self.fmap is not None:
            p = self.fmap.project(flow.z)
            line.set_data(p[:, 0], p[:, 1])
            start.set_offsets(p[:1])
            end.set_offsets(p[-1:])
        return self._blit(fig, [line, start, end])

    def _make_path_figure(self):
        from matplotlib.collections import LineCollection

        from .figures import COLORS, plt  # figures sets the Agg backend

        fig, ax = plt.subplots(figsize=(5.4, 4.2), dpi=80)
        if self.fmap is None:
            ax.text(0.5, 0.5, "no map of test digits for this model", ha="center", va="center")
            ax.axis("off")
            return fig, ax.plot([], [])[0], ax.scatter([], []), ax.scatter([], [])
        fm = self.fmap
        segs = np.transpose(fm.paths, (1, 0, 2))
        ax.add_collection(LineCollection(segs, colors=[COLORS[int(c) % 10] for c in fm.labels], alpha=0.18, lw=0.8))
        for c in np.unique(fm.labels):
            end = fm.paths[-1, fm.labels == c].mean(0)
            ax.text(end[0], end[1], self.names[int(c)][:6], color=COLORS[int(c) % 10], fontsize=9, weight="bold",
                    ha="center", va="center")
        lo, hi = fm.paths.reshape(-1, 2).min(0), fm.paths.reshape(-1, 2).max(0)
        pad = 0.25 * (hi - lo)
        ax.set(xlim=(lo[0] - pad[0], hi[0] + pad[0]), ylim=(lo[1] - pad[1], hi[1] + pad[1]), xticks=[], yticks=[],
               xlabel=f"PC 1 ({fm.explained[0]:.0%})", ylabel=f"PC 2 ({fm.explained[1]:.0%})")
        ax.set_title("The path: this digit over test digits' paths (PCA)", fontsize=10)
        line = ax.plot([], [], color="black", lw=2.4)[0]
        start = ax.scatter(np.zeros((0, 2))[:, 0], np.zeros((0, 2))[:, 1], s=40, facecolors="white",
                           edgecolors="black", zorder=3, label="z(0)")
        end = ax.scatter(np.zeros(0), np.zeros(0), s=70, marker="X", color="black", zorder=3, label="z(T)")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        return fig, line, start, end

    def summary(self, flow: Flow, solver: str, score: Optional[float] = None) -> str:
        top = int(np.argmax(flow.final))
        text = (f"**{self.names[top]}** with probability {flow.final[top]:.3f} · {flow.nfe} function evaluations · "
                f"{flow.ms:.0f} ms · solver {solver}, T = {flow.ts[-1]:g}")
        change = last_change(flow.ts, flow.probs.argmax(1))
        text += ("\n\nthe flow did not change the answer: the classifier says the same on z(0)" if change is None else
                 f"\n\nthe flow changed {self.names[change[0]]} → {self.names[change[1]]} at t = {change[2]:.2f}")
        line = ood.verdict(score, self.detector.threshold if self.detector else None, self.dataset)
        if line is not None:
            text += f"\n\n⚠ **{line}**"
        return text


def load_predictor(model_ref: str, device: str = "cpu") -> Predictor:
    """A run folder or checkpoint (the shipped one included) -> Predictor with its flow map."""
    from .checkpoint import open_model
    from .flow import cached_flow_map

    m = open_model(model_ref, device)
    fmap = None
    if "flow_map" in m.state:
        fmap = FlowMap.from_state(m.state["flow_map"])
    else:  # a user's run: built once from its test set and cached in the run folder
        try:
            fmap = cached_flow_map(m.run or m.path.parent, m.model,
                                   m.test_split)
        except (OdenetError, OSError) as e:
            log.warning("no flow map: %s", e)
    return Predictor(m.model, m.cfg.dataset, fmap, detector=ood.from_checkpoint(m.state), cfg=m.cfg)


class Oversize(NamedTuple):
    """What the bounded sketchpad hands on instead of decoding a picture larger than odenet reads."""

    width: int
    height: int


def bound_pixels(convert):
    """Wrap a Gradio image component's ``convert_and_format_image``: pictures of more than ``MAX_PIXELS`` pixels
    (read from the header, before any decoding) become an ``Oversize`` instead of gigabytes of pixels."""
    from PIL import Image

    from .images import MAX_PIXELS

    def bounded(file, *args, **kwargs):
        if file is not None:
            path = getattr(file, "path", None)
            try:
                with Image.open(path if path is not None else io.BytesIO(file)) as im:
                    w, h = im.size
            except Exception:  # noqa: BLE001 - an unreadable picture: Gradio's own reading says so
                w = h = 0
            if w * h > MAX_PIXELS:
                return Oversize(w, h)
        return convert(file, *args, **kwargs)

    return bounded


def sketch_array(value) -> Optional[np.ndarray]:
    """The image in a Sketchpad value (a dict with a ``composite`` layer, or an array); None when empty.
    Raises ``OdenetError`` for a picture over the pixel limit."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("composite")
    if value is None:
        return None
    if isinstance(value, Oversize):
        raise OdenetError(f"the drawing is {value.width}x{value.height} pixels: larger than odenet reads")
    a = np.asarray(value)
    return a if a.size else None


def _handlers(pred: Predictor):
    """The page's three callbacks: a sketch, an upload, a change of solver settings."""

    def render(image: Optional[np.ndarray], solver, rtol, atol, step, t_end):
        """-> (model's view, probabilities, status, flow figure, path figure)."""
        empty = (None, None, HINT, None, None)
        if image is None:
            return empty
        view = pred.image_file(_view(image))
        try:
            flow, score, flow_png, path_png = pred.render(image, solver, rtol, atol, step, t_end)
        except OdenetError as e:
            return (view, None, f"⚠ {e}", None, None)
        return (view, pred.probabilities(flow), pred.summary(flow, solver, score), flow_png, path_png)

    def prepare(source) -> Tuple[Optional[np.ndarray], str]:
        from .images import prepare_image

        try:
            return prepare_image(source), ""
        except OdenetError as e:
            return None, str(e)
        except Exception as e:  # noqa: BLE001 - whatever a hostile upload does, the page says one line
            return None, f"this picture could not be read ({type(e).__name__})"

    def on_sketch(value, *settings):
        try:
            arr = sketch_array(value)
        except OdenetError as e:
            return (None, None, None, f"⚠ {e}", None, None)
        image, err = prepare(arr) if arr is not None else (None, "")
        if image is None and err and "is blank" not in err:  # a blank pad is not an error: render shows the hint
            return (None, None, None, f"⚠ {err.replace('the image', 'the drawing')}", None, None)
        return (image, *render(image, *settings))

    def on_upload(file, *settings):
        if file is None:
            return (None, None, None, HINT, None, None)
        path = file if isinstance(file, str) else getattr(file, "name", None)
        image, err = prepare(path)
        if image is None:
            return (None, None, None, f"⚠ {err.replace(str(Path(path).parent) + '/', '')}", None, None)
        return (image, *render(image, *settings))

    def on_settings(image, *settings):
        return render(image, *settings)

    return on_sketch, on_upload, on_settings


def build_app(pred: Predictor):
    """The Gradio Blocks page around ``pred``."""
    import gradio as gr

    on_sketch, on_upload, on_settings = _handlers(pred)
    with gr.Blocks(title="odenet: watch a digit flow through a neural ODE", analytics_enabled=False,
                   delete_cache=CACHE_CLEANUP) as app:
        gr.Markdown("## odenet: draw a digit and watch it flow through the neural ODE\n"
                    "The encoder maps the digit to z(0); the ODE dz/dt = f(z) carries it to z(T); the classifier "
                    "reads z(T). Below: the class probabilities along t, and the digit's path among test digits.")
        gr.Markdown(budget_text(), elem_id="budget")
        image_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                sketch = gr.Sketchpad(label="Draw a digit", type="numpy", canvas_size=(280, 280), layers=False,
                                      transforms=(), fixed_canvas=True,
                                      brush=gr.Brush(colors=["#000000"], default_size=18, color_mode="fixed"),
                                      elem_id="sketchpad")
                sketch.convert_and_format_image = bound_pixels(sketch.convert_and_format_image)
                upload = gr.File(label="or upload a photo / scan", type="filepath", elem_id="upload")
            with gr.Column(scale=1):
                seen = gr.Image(label="What the model sees (28x28)", height=196, width=196, interactive=False,
                                elem_id="seen", image_mode="L")
                probs = gr.Label(label="Class probabilities", num_top_classes=10, elem_id="probs")
                status = gr.Markdown(HINT, elem_id="status")
        with gr.Row():
            cfg = pred.cfg
            solver = gr.Dropdown(SOLVERS, value=cfg.solver if cfg.solver in SOLVERS else SOLVERS[0], label="solver",
                                 elem_id="solver")
            rtol = gr.Number(cfg.rtol, label="rtol (adaptive)", elem_id="rtol")
            atol = gr.Number(cfg.atol, label="atol (adaptive)", elem_id="atol")
            step = gr.Number(cfg.step_size, label="step size (fixed-step)", elem_id="step")
            t_end = gr.Slider(*LIMITS["T"], value=float(pred.model.odeblock.t_end), step=0.1, label="T", elem_id="t_end")
        with gr.Row():
            flow_plot = gr.Image(label="Decision along the flow", interactive=False, elem_id="flow_plot")
            path_plot = gr.Image(label="The path", interactive=False, elem_id="path_plot")
        settings = [solver, rtol, atol, step, t_end]
        for s in settings:  # what an API client sends is checked by Predictor.flow, in one line on the page
            s.preprocess = _raw_on_error(s.preprocess)
        outputs = [seen, probs, status, flow_plot, path_plot]
        sketch.change(on_sketch, [sketch, *settings], [image_state, *outputs], show_progress="hidden")
        upload.change(on_upload, [upload, *settings], [image_state, *outputs], show_progress="hidden")
        for s in settings:
            s.change(on_settings, [image_state, *settings], outputs, show_progress="hidden")
    return app


def _raw_on_error(preprocess):
    """A component's ``preprocess`` that hands a value it cannot take (None for a slider, a name not in a
    dropdown) to the handler as it came, instead of raising inside Gradio with a traceback in the log."""

    def lenient(payload, *args, **kwargs):
        try:
            return preprocess(payload, *args, **kwargs)
        except Exception:  # noqa: BLE001 - the handler's own check answers in one line
            return payload

    return lenient


def budget_text() -> str:
    """The per-request budget, as the page states it."""
    r = {k: f"{lo:g} to {hi:g}" for k, (lo, hi) in LIMITS.items()}
    return (f"Each request has a budget: rtol and atol {r['rtol']}, step size {r['step size']}, T {r['T']}, at most "
            f"{MAX_STEPS:,} solver steps; uploads up to {MAX_UPLOAD.upper()}; at most {QUEUE_SIZE} requests wait.")


def _view(image: np.ndarray) -> np.ndarray:
    """The 28x28 image enlarged 7x (nearest) so its pixels are visible."""
    return np.kron(image, np.ones((7, 7), dtype=np.uint8))


def serve(model_ref: str, host: str = "127.0.0.1", port: int = 7860, share: bool = False, device: str = "cpu",
          block: bool = True):
    """Build and launch the page; returns the Gradio app (``block=False`` keeps it running in the background)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise OdenetError(f"port must be from 1 to 65535, got {port!r}")
    try:
        socket.getaddrinfo(host, port)
    except (OSError, UnicodeError):
        raise OdenetError(f"cannot serve on {host!r}: not an address or host name of this machine") from None
    pred = load_predictor(model_ref, device)
    atexit.register(shutil.rmtree, pred.out_dir, ignore_errors=True)  # Ctrl-C and normal exits
    if block and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)  # SIGTERM too: exit through atexit, not around it
    app = build_app(pred)
    app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    try:
        app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=True,
                   show_error=False, max_file_size=MAX_UPLOAD)
    except OSError as e:
        raise OdenetError(f"cannot serve on {host}:{port}: {str(e).splitlines()[0]}") from None
    if not block:
        app.odenet_out_dir = pred.out_dir
    return app


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def png_bytes(image: np.ndarray) -> bytes:
    """A grey or RGB uint8 image as PNG bytes, as the page sends it."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
