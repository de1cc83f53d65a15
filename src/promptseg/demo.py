"""`promptseg demo`: a Gradio web app to try the methods on an image and a vocabulary (optional extra `demo`).

    promptseg demo                         # the bundled shapes model, http://127.0.0.1:7860
    promptseg demo --model stable-diffusion-v1-5/stable-diffusion-v1-5 --port 8000

The backbone loads once per process, methods and filters once per setting, and requests run one at a time (a queue
with concurrency 1 and a lock), so two users never share a half-finished UNet capture. Every method and filter in
the registries is offered. Anything wrong with a request (not an image, an image too large, no labels, a bad
setting) is answered by a message in the page; the app keeps serving. The logic lives in `DemoSession.run`,
which the tests call without a browser; `build_app` only lays out the page.

Referring expressions get their tab when the `anyword` method exists; today the app segments vocabularies.
"""

from __future__ import annotations

import html
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from promptseg.api import split_cli_labels
from promptseg.io import ImageLoadError, load_image, overlay, palette, save_result

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
MODEL_DEFAULT = "model default"
DISPLAY_SIDE = 384


@dataclass
class DemoOutput:
    """What the page shows for one request.

    Attributes:
        overlay (`PIL.Image`, *optional*): the image with its label map blended in (None on error).
        heatmaps (`list[tuple[PIL.Image, str]]`): one coloured score map per label, with its name.
        legend (`str`): HTML: a colour chip and the name of each label in the overlay.
        status (`str`): markdown: kept/dropped labels, timings, warnings, or the error message.
        files (`list[str]`): the label PNG and the masks JSON (COCO RLE) to download.
    """

    overlay: Image.Image | None = None
    heatmaps: list = field(default_factory=list)
    legend: str = ""
    status: str = ""
    files: list = field(default_factory=list)


def _display(image: Image.Image, resample=Image.NEAREST) -> Image.Image:
    """Small images (the shapes world is 64x64) enlarged for the page by a whole factor."""
    factor = max(1, DISPLAY_SIDE // max(image.size))
    return image.resize((image.width * factor, image.height * factor), resample) if factor > 1 else image


def heat(scores: np.ndarray) -> Image.Image:
    """An HxW map in [0, 1] as a dark-blue -> yellow RGB picture."""
    s = np.clip(scores, 0, 1)[..., None]
    low, high = np.array([20, 30, 90], np.float32), np.array([250, 230, 40], np.float32)
    return Image.fromarray((low + (high - low) * s).round().astype(np.uint8))


def legend_html(labels: list[str]) -> str:
    colours = palette(len(labels) + 1)[1:]
    if labels and labels[0] == "background":
        colours[0] = 0
    chips = [
        f'<span class="legend-item" style="margin-right:1em"><span style="display:inline-block;width:1em;height:1em;'
        f'background:rgb{tuple(int(v) for v in c)};border:1px solid #000;vertical-align:middle"></span> '
        f"{html.escape(name)}</span>"
        for name, c in zip(labels, colours)
    ]
    return '<div id="promptseg-legend">' + "".join(chips) + "</div>"


class DemoSession:
    """One loaded backbone serving demo requests, one at a time.

    Args:
        model (`str`, defaults to "shapes"): what `load_backbone` takes.
        device (`str`, *optional*): "cpu", "cuda", ...
        dtype (`str`, *optional*): "fp32", "fp16", "bf16" (the device's default when None).
        offload (`str`, *optional*): "model" or "sequential" (`promptseg.models.offload`).
        quantize (`str`, *optional*): "int8" (`promptseg.models.quantize`).
    """

    def __init__(self, model: str = "shapes", device: str | None = None, dtype: str | None = None,
                 offload: str | None = None, quantize: str | None = None):
        self.model, self.device, self.dtype, self.offload = model, device, dtype, offload
        self.quantize = quantize
        self._backbone = None
        self._built: dict = {}  # stages built once per name and settings, shared by every request's pipeline
        self._lock = threading.Lock()
        self.out_dir = Path(tempfile.mkdtemp(prefix="promptseg_demo_"))

    @property
    def backbone(self):
        if self._backbone is None:
            from promptseg.models import load_backbone

            self._backbone = load_backbone(self.model, device=self.device, dtype=self.dtype, offload=self.offload,
                                           quantize=self.quantize)
        return self._backbone

    def pipeline(self, method: str, filter_name: str | None = None, refine_name: str | None = None,
                 task: str = "segment"):
        """The loaded pipeline of `method` with the filter and refiner named (None: the model's), on the session's
        backbone; stages are built once and shared."""
        from promptseg.pipeline import Pipeline

        return Pipeline(self.model, method, filter=filter_name, refine=refine_name, task=task, backbone=self.backbone,
                        built=self._built).load()

    def method(self, name: str):
        """The built method `name` (with the model's settings), the instance every request with `name` uses; no
        filter or refiner is built for it."""
        from promptseg.pipeline import NO_FILTER, NO_REFINER

        return self.pipeline(name, NO_FILTER, NO_REFINER).method.instance

    def run(self, path: str | None, labels_text: str, method: str, filter_name: str, progress=None,
            refine_name: str = MODEL_DEFAULT) -> DemoOutput:
        """Segment the image file at `path` into the labels typed in `labels_text` (commas between labels, "|"
        between synonyms), then refine with `refine_name`. Bad input gives a `DemoOutput` whose `status` says what
        to fix."""
        try:
            if not path:
                raise ValueError("upload an image or pick an example first")
            if not labels_text or not labels_text.strip():
                raise ValueError('type at least one label, e.g. "circle, square, grass"')
            labels = split_cli_labels(labels_text)
            from promptseg.text import parse_labels

            parse_labels(labels)  # checked before any model work
            image = load_image(path)
            with self._lock:
                return self._segment(image, labels, method, None if filter_name == MODEL_DEFAULT else filter_name,
                                     Path(path).stem, progress, None if refine_name == MODEL_DEFAULT else refine_name)
        except (ImageLoadError, ValueError, TypeError, FileNotFoundError, OSError) as err:
            return DemoOutput(status=f"**Error:** {html.escape(str(err))}")

    def _segment(self, image, labels, method_name, filter_name, stem, progress, refine_name=None) -> DemoOutput:
        tick = progress or (lambda *a, **k: None)
        tick(0.05, desc="loading the model")
        pipe = self.pipeline(method_name, filter_name, refine_name)
        segmenter, chosen, refined_by = pipe.method.instance, pipe.filter.name, pipe.refiner.name
        tick(0.2, desc=f"filtering with {chosen}, then segmenting with {method_name}")
        if hasattr(segmenter, "on_step"):  # methods that optimise per image report each step
            segmenter.on_step = lambda done, total: tick(0.2 + 0.7 * done / total, desc=f"step {done} of {total}")
        start = time.perf_counter()
        try:
            result = pipe.segment(image, labels)
        finally:
            if hasattr(segmenter, "on_step"):
                segmenter.on_step = None
        seconds = time.perf_counter() - start
        tick(0.9, desc="drawing")
        folder = self.out_dir / f"{int(time.time() * 1000)}"
        paths = save_result(result, image, folder, stem)
        big = _display(image, Image.BICUBIC)
        big_map = np.asarray(Image.fromarray(result.label_map.astype(np.int32)).resize(big.size, Image.NEAREST))
        shown = overlay(big, big_map, result.labels)
        maps = [(_display(heat(s)), name) for s, name in zip(result.scores, result.labels) if name != "background"
                or "background" in labels]
        decision = result.extra.get("filter", {})
        lines = [f"**{method_name}** with filter {chosen} and refiner {refined_by} in {seconds:.2f} s "
                 f"({', '.join(f'{k} {v:.2f} s' for k, v in result.timings.items())})"]
        if decision.get("dropped"):
            lines.append("Dropped by the filter: " + "; ".join(f"{k} ({v})" for k, v in decision["dropped"].items()))
        else:
            lines.append("The filter kept every label.")
        regions = result.extra.get("refine", {}).get("regions", [])
        if refined_by != "none":
            lines.append(f"The refiner redrew {len(regions)} region(s)." if regions else "The refiner redrew nothing.")
        lines += [f"Warning: {html.escape(w)}" for w in result.warnings if not w.startswith("filter dropped")]
        tick(1.0)
        return DemoOutput(overlay=shown, heatmaps=maps, legend=legend_html(result.labels), status="\n\n".join(lines),
                          files=[str(paths["label_map"]), str(paths["masks"])])


    def refer(self, path: str | None, expression: str, method: str, progress=None) -> DemoOutput:
        """Segment what `expression` refers to in the image file at `path` (possibly nothing). Bad input gives a
        `DemoOutput` whose `status` says what to fix."""
        try:
            if not path:
                raise ValueError("upload an image or pick an example first")
            if not expression or not expression.strip():
                raise ValueError('type a referring expression, e.g. "the red circle left of the square"')
            image = load_image(path)
            with self._lock:
                return self._refer(image, expression.strip(), method, Path(path).stem, progress)
        except (ImageLoadError, ValueError, TypeError, FileNotFoundError, OSError, ImportError) as err:
            return DemoOutput(status=f"**Error:** {html.escape(str(err))}")

    def _refer(self, image, expression, method_name, stem, progress) -> DemoOutput:
        from promptseg.io import save_refer

        tick = progress or (lambda *a, **k: None)
        tick(0.05, desc="loading the model")
        pipe = self.pipeline(method_name, task="refer")
        segmenter = pipe.method.instance
        if hasattr(segmenter, "on_step"):
            segmenter.on_step = lambda done, total: tick(0.2 + 0.6 * done / total, desc=f"step {done} of {total}")
        start = time.perf_counter()
        try:
            result = pipe.refer(image, expression)
        finally:
            if hasattr(segmenter, "on_step"):
                segmenter.on_step = None
        seconds = time.perf_counter() - start
        tick(0.9, desc="drawing")
        paths = save_refer(result, image, self.out_dir / f"{int(time.time() * 1000)}", stem)
        big = _display(image, Image.BICUBIC)
        big_mask = np.asarray(Image.fromarray(result.mask.astype(np.uint8)).resize(big.size, Image.NEAREST))
        names = ["background", expression]
        lines = [f"**{method_name}** in {seconds:.2f} s: " + (f"{int(result.mask.sum())} pixels" if result.mask.any()
                                                              else "no referent found (empty answer)")]
        if "words" in result.extra:
            lines.append("Concept words: " + ", ".join(result.extra["words"]))
        lines += [f"Warning: {html.escape(w)}" for w in result.warnings]
        tick(1.0)
        return DemoOutput(overlay=overlay(big, big_mask.astype(np.int32), names),
                          heatmaps=[(_display(heat(result.score)), "referent map")], legend=legend_html(names),
                          status="\n\n".join(lines), files=[str(paths["mask"]), str(paths["json"])])


def example_images(folder: Path) -> list[Path]:
    """The repository's example images; where promptseg is installed without them, three shapes-world test
    images rendered into `folder`."""
    found = sorted(EXAMPLES_DIR.glob("*.png"))
    if found:
        return found
    from promptseg.data.shapes_world import render_sample

    out = []
    for index in (1, 2, 5):
        path = folder / f"shapes_test_{index}.png"
        Image.fromarray(render_sample("test", index).image).save(path)
        out.append(path)
    return out


def build_app(session: DemoSession):
    """The Gradio page around `session`."""
    import gradio as gr

    from promptseg.filters import list_filters
    from promptseg.methods import methods_for
    from promptseg.methods.base import METHODS
    from promptseg.refiners import list_refiners

    methods = list(methods_for(session.backbone.family))  # what runs on this backbone (ConceptAttention: a DiT)
    referring = [name for name in methods if hasattr(METHODS.get(name)[0], "refer")]
    filters = [MODEL_DEFAULT] + list(list_filters())
    refiners = [MODEL_DEFAULT] + list(list_refiners())

    def handle(path, labels_text, method, filter_name, refine_name, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        out = session.run(path, labels_text, method, filter_name, progress, refine_name)
        return out.overlay, out.heatmaps, out.legend, out.status, out.files or None

    with gr.Blocks(title="promptseg") as app:
        gr.Markdown(f"# promptseg\nTraining-free open-vocabulary segmentation with a frozen diffusion model "
                    f"(`{session.model}`). Upload an image, type any words, press **Segment**.")
        with gr.Tab("Vocabulary"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Image", file_count="single", type="filepath", elem_id="image-input")
                    preview = gr.Image(label="Input", type="filepath", interactive=False, height=260)
                    labels = gr.Textbox(label='Labels (commas between labels, "|" between synonyms)',
                                        value="grass, sand, water, sky, circle, square, triangle", elem_id="labels")
                    method = gr.Dropdown(methods, value="baseline" if "baseline" in methods else methods[0],
                                         label="Method", elem_id="method")
                    filter_name = gr.Dropdown(filters, value=MODEL_DEFAULT, label="Class filter", elem_id="filter")
                    refine_name = gr.Dropdown(refiners, value=MODEL_DEFAULT, label="Refiner (edges)", elem_id="refine")
                    button = gr.Button("Segment", variant="primary", elem_id="segment")
                    gr.Examples([[str(p)] for p in example_images(session.out_dir)], inputs=[upload], label="Examples")
                with gr.Column():
                    result = gr.Image(label="Segmentation", type="pil", interactive=False, elem_id="overlay")
                    legend = gr.HTML(elem_id="legend")
                    status = gr.Markdown(elem_id="status")
                    maps = gr.Gallery(label="Score map per label", columns=4, height=220)
                    files = gr.File(label="Downloads: label PNG, masks JSON (COCO RLE)", file_count="multiple")
        with gr.Tab("Referring"):
            with gr.Row():
                with gr.Column():
                    r_upload = gr.File(label="Image", file_count="single", type="filepath", elem_id="refer-image")
                    r_preview = gr.Image(label="Input", type="filepath", interactive=False, height=260)
                    expression = gr.Textbox(label="Referring expression", value="the red circle",
                                            elem_id="expression")
                    r_method = gr.Dropdown(referring, value="anyword" if "anyword" in referring else referring[0],
                                           label="Method", elem_id="refer-method")
                    r_button = gr.Button("Segment", variant="primary", elem_id="refer")
                    gr.Examples([[str(p)] for p in example_images(session.out_dir)], inputs=[r_upload], label="Examples")
                with gr.Column():
                    r_result = gr.Image(label="Referent", type="pil", interactive=False, elem_id="refer-overlay")
                    r_legend = gr.HTML(elem_id="refer-legend")
                    r_status = gr.Markdown(elem_id="refer-status")
                    r_maps = gr.Gallery(label="Referent map", columns=2, height=220)
                    r_files = gr.File(label="Downloads: mask PNG, JSON (COCO RLE)", file_count="multiple")

        def refer(path, text, name, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
            out = session.refer(path, text, name, progress)
            return out.overlay, out.heatmaps, out.legend, out.status, out.files or None

        def show(path):
            return path if path and Path(path).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp") else None

        upload.change(show, inputs=upload, outputs=preview)
        r_upload.change(show, inputs=r_upload, outputs=r_preview)
        button.click(handle, inputs=[upload, labels, method, filter_name, refine_name],
                     outputs=[result, maps, legend, status, files], concurrency_limit=1)
        r_button.click(refer, inputs=[r_upload, expression, r_method],
                       outputs=[r_result, r_maps, r_legend, r_status, r_files], concurrency_limit=1)
    app.queue(default_concurrency_limit=1)
    return app


def serve(model: str = "shapes", host: str = "127.0.0.1", port: int = 7860, device: str | None = None,
          dtype: str | None = None, offload: str | None = None, quantize: str | None = None) -> None:
    """Start the app and block (Ctrl-C stops it)."""
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise ImportError("the demo needs Gradio: pip install 'promptseg[demo]'") from err
    session = DemoSession(model, device, dtype, offload, quantize)
    session.backbone  # noqa: B018 (load once, before the first request)
    build_app(session).launch(server_name=host, server_port=port, show_error=False, footer_links=[])
