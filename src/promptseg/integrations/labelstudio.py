"""A Label Studio ML backend: pre-annotations as brush labels (or polygons) in the project's own classes.

    promptseg serve label-studio --model shapes --method fastseg --port 9090
    # Label Studio: Settings > Model > Connect model > http://localhost:9090

It speaks the protocol `label-studio-ml` serves (its `api.py`): `GET /health` ({"status": "UP", ...}), `POST /setup`
({"schema": labelling config XML, "project": ...} -> {"model_version": ...}) and `POST /predict` ({"tasks": [...],
"label_config": ..., "project": ...} -> {"results": [one prediction per task, in order]}), on FastAPI. The classes
are the `<Label value=...>`s of the config's first `BrushLabels` (or `PolygonLabels`) tag, the image the task's value
of its `toName` `<Image>`. Each instance (a thing class's connected region, a stuff class's union: `to_detections`)
is one result: brush labels in Label Studio's own RLE (`brush_rle`, which `label_studio_converter.brush.decode_rle`
reads back to the mask exactly; not COCO's RLE), or a polygon in percent of the image (pixel-corner coordinates,
holes and parts joined by zero-width cuts); each with the instance's score, and the prediction with their mean.

Images: `/data/local-files/?d=REL` (Label Studio's local storage) and plain file paths, both only inside
`LOCAL_FILES_DOCUMENT_ROOT` (the same folder Label Studio serves; nothing outside it is read); `/data/upload/...` and
other relative URLs from `LABEL_STUDIO_URL`; http(s) URLs downloaded, with `Authorization: Token
$LABEL_STUDIO_API_KEY` sent to Label Studio's own host; every image EXIF-rotated as Label Studio shows it. Errors: a
request without tasks or without a config, a config whose classes promptseg cannot use, or a task whose image
cannot be read is answered 400 or 422, and a failure while predicting 500, each with {"status", "detail",
"errors"} naming the task and the fix; the results are all or nothing, as Label Studio expects one per task.
Predictions run one at a time on the one model, in the server's thread pool, so `/health` answers while one
runs. Instances under `min_area` pixels are left out (16, as `promptseg label`).
Needs the extra `labelstudio`.
"""

import os
import threading
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptseg.integrations import require
from promptseg.text import parse_labels

RLE_SIZES = (3, 4, 8, 16)  # run-length field widths Label Studio's brush RLE uses (label_studio_converter.brush)
TAGS = ("BrushLabels", "PolygonLabels")


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of an HxW mask (non-zero = the brush): the RGBA bytes (each pixel 0 or 255 in every
    channel) as a bit stream of a 32-bit count, a 5-bit word size minus one, four 4-bit run-field widths minus one,
    then one record per run (1 bit "repeated", 2 bits which width, the run length minus one, the 8-bit value),
    zero-padded to whole bytes, as a list of byte values."""
    flat = np.repeat(np.where(np.asarray(mask).ravel() != 0, 255, 0).astype(np.uint8), 4)
    bits = [f"{flat.size:032b}", f"{8 - 1:05b}", *(f"{size - 1:04b}" for size in RLE_SIZES)]
    edges = np.flatnonzero(np.diff(flat.astype(np.int16))) + 1
    starts = np.concatenate([[0], edges])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    for start, length in zip(starts.tolist(), lengths.tolist()):
        value = f"{int(flat[start]):08b}"
        while length:
            run = min(length, 1 << RLE_SIZES[-1])
            k = next(i for i, size in enumerate(RLE_SIZES) if run - 1 < 1 << size)
            bits.append(f"1{k:02b}{run - 1:0{RLE_SIZES[k]}b}{value}")
            length -= run
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[i:i + 8], 2) for i in range(0, len(stream), 8)]


@dataclass
class Control:
    """The labelling config's control tag promptseg answers: its kind, name, image tag and classes."""

    kind: str
    name: str
    to_name: str
    image_key: str
    labels: list[str]


def parse_config(config: str) -> Control:
    """The first BrushLabels (else PolygonLabels) tag of a labelling config and the Image it labels.

    Raises:
        ValueError: the XML does not parse, has neither tag, no Label in it, or no Image named by its toName.
    """
    try:
        root = ET.fromstring(config)
    except ET.ParseError as err:
        raise ValueError(f"the labelling config is not valid XML ({err})") from err
    for kind in TAGS:
        tag = root.find(f".//{kind}")
        if tag is None:
            continue
        labels = [label.get("value") for label in tag.iter("Label") if label.get("value")]
        if not labels:
            raise ValueError(f"the config's <{kind} name={tag.get('name')!r}> has no <Label value=...>; add the classes")
        try:
            parse_labels(labels)
        except ValueError as err:
            raise ValueError(f"the config's <{kind}> classes cannot be segmented: {err}") from err
        to_name = tag.get("toName", "").split(",")[0]
        image = next((i for i in root.iter("Image") if i.get("name") == to_name), None)
        if image is None:
            raise ValueError(f"<{kind}> labels toName={to_name!r}, but no <Image name={to_name!r}> is in the config")
        return Control(kind, tag.get("name", kind.lower()), to_name, image.get("value", "$image").lstrip("$"), labels)
    raise ValueError("the labelling config has no BrushLabels or PolygonLabels tag: promptseg answers masks; add one "
                     "(e.g. <BrushLabels name=\"tag\" toName=\"image\"><Label value=\"cat\"/></BrushLabels>)")


def _inside_root(relative: str, task) -> Path:
    """A path under `LOCAL_FILES_DOCUMENT_ROOT`, refused when it leaves it or the root is not set."""
    root = os.environ.get("LOCAL_FILES_DOCUMENT_ROOT")
    if not root:
        raise ValueError(f"task {task.get('id')}: {relative} is a local file; set LOCAL_FILES_DOCUMENT_ROOT to the "
                         "folder Label Studio serves local files from (nothing outside it is read)")
    base = Path(root).resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"task {task.get('id')}: {relative} is outside LOCAL_FILES_DOCUMENT_ROOT ({base}); refused")
    return path


def read_task_image(task: dict, key: str):
    """The PIL image a task's `data[key]` points at (see the module's docstring for the URL forms)."""
    from promptseg.io import load_image

    url = (task.get("data") or {}).get(key)
    if not isinstance(url, str) or not url:
        raise ValueError(f"task {task.get('id')} has no data[{key!r}] image, which the config's <Image> names")
    parsed = urllib.parse.urlparse(url)
    if parsed.path.startswith("/data/local-files"):
        return load_image(_inside_root(urllib.parse.parse_qs(parsed.query).get("d", [""])[0], task))
    if not parsed.scheme and Path(url).is_absolute() and not url.startswith("/data/"):
        return load_image(_inside_root(url, task))
    if parsed.scheme not in ("", "http", "https"):
        raise ValueError(f"task {task.get('id')}: {url} is neither a Label Studio URL nor http(s); refused")
    host = os.environ.get("LABEL_STUDIO_URL", "").rstrip("/")
    if not parsed.scheme:
        if not host:
            raise ValueError(f"task {task.get('id')}: {url} is a Label Studio URL; set LABEL_STUDIO_URL (and "
                             "LABEL_STUDIO_API_KEY) so the backend can fetch it")
        url = host + "/" + url.lstrip("/")
    request = urllib.request.Request(url)
    token = os.environ.get("LABEL_STUDIO_API_KEY")
    if token and host and urllib.parse.urlparse(url).netloc == urllib.parse.urlparse(host).netloc:
        request.add_header("Authorization", f"Token {token}")
    with urllib.request.urlopen(request, timeout=60) as response:
        return load_image(response.read(), name=url)


def task_prediction(pipeline, control: Control, image, model_version: str, min_area: int = 16) -> dict:
    """One task's prediction: a result per instance of the control's classes, with scores."""
    from promptseg.io.detections import to_detections
    from promptseg.io.polygons import joined_polygon

    result = pipeline.segment(image, control.labels)
    names = [label.name for label in parse_labels(control.labels)]  # promptseg's name of each label
    detections = to_detections(result, classes=names, min_area=min_area)
    width, height = image.size
    items = []
    for i, (mask, class_id, score) in enumerate(zip(detections.mask, detections.class_id, detections.confidence)):
        common = {"id": f"promptseg-{i}", "from_name": control.name, "to_name": control.to_name,
                  "original_width": width, "original_height": height, "image_rotation": 0, "score": float(score)}
        label = [control.labels[class_id]]
        if control.kind == "BrushLabels":
            items.append({**common, "type": "brushlabels",
                          "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": label}})
        else:
            ring = joined_polygon(mask) / np.array([width, height]) * 100  # pixel corners, as Label Studio draws
            items.append({**common, "type": "polygonlabels",
                          "value": {"points": ring.round(4).tolist(), "closed": True, "polygonlabels": label}})
    score = float(detections.confidence.mean()) if len(detections) else 0.0
    return {"result": items, "score": score, "model_version": model_version}


def create_app(pipeline, model_version: str, min_area: int = 16):
    """The FastAPI app answering Label Studio with `pipeline` (a loaded `promptseg.Pipeline`)."""
    fastapi = require("fastapi", "labelstudio", "the Label Studio backend")
    responses = require("fastapi.responses", "labelstudio", "the Label Studio backend")
    concurrency = require("starlette.concurrency", "labelstudio", "the Label Studio backend")
    app = fastapi.FastAPI(title="promptseg Label Studio ML backend")
    schemas: dict[str, str] = {}
    model_lock = threading.Lock()  # one prediction at a time on the one model

    def error(status: int, detail: str, errors: list | None = None):
        return responses.JSONResponse({"status": status, "detail": detail, "errors": errors or []}, status_code=status)

    async def body(request) -> dict | None:
        try:
            data = await request.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    @app.get("/")
    @app.get("/health")
    def health():
        return {"status": "UP", "model_class": "promptseg", "model_version": model_version}

    @app.post("/setup")
    async def setup(request: fastapi.Request):
        data = await body(request)
        if data is None or not isinstance(data.get("schema"), str):
            return error(400, "POST /setup takes JSON with the labelling config as 'schema'")
        try:
            parse_config(data["schema"])
        except ValueError as err:
            return error(400, str(err))
        schemas[str(data.get("project", "")).split(".")[0]] = data["schema"]
        return {"model_version": model_version}

    @app.post("/predict")
    async def predict(request: fastapi.Request):
        data = await body(request)
        # reading images and running the model happen in the thread pool, so /health answers meanwhile
        return await concurrency.run_in_threadpool(predict_tasks, data)

    def predict_tasks(data: dict | None):
        if data is None or not isinstance(data.get("tasks"), list) or not data["tasks"]:
            return error(400, "POST /predict takes JSON with a non-empty 'tasks' list")
        config = data.get("label_config") or schemas.get(str(data.get("project", "")).split(".")[0])
        if not config:
            return error(400, "no labelling config: send 'label_config' with the tasks, or POST /setup first")
        try:
            control = parse_config(config)
        except ValueError as err:
            return error(400, str(err))
        images, errors = [], []
        for task in data["tasks"]:
            try:
                images.append(read_task_image(task, control.image_key))
            except Exception as err:  # noqa: BLE001 - every task's reason is reported, none is dropped silently
                errors.append({"task": task.get("id") if isinstance(task, dict) else None,
                               "error": f"{type(err).__name__}: {err}"})
        if errors:
            return error(422, f"{len(errors)} of {len(data['tasks'])} task(s) could not be read; nothing was "
                         "predicted", errors)
        try:
            with model_lock:
                return {"results": [task_prediction(pipeline, control, image, model_version, min_area)
                                    for image in images]}
        except Exception as err:  # noqa: BLE001 - out of memory, a model that refuses the input: JSON, not a trace
            return error(500, f"prediction failed: {type(err).__name__}: {err}")

    return app


def serve(model: str, method: str = "baseline", host: str = "127.0.0.1", port: int = 9090, min_area: int = 16,
          **pipeline) -> None:
    """Load the pipeline, then serve the backend until interrupted."""
    from promptseg import __version__
    from promptseg.pipeline import Pipeline

    uvicorn = require("uvicorn", "labelstudio", "the Label Studio backend")
    require("fastapi", "labelstudio", "the Label Studio backend")
    pipe = Pipeline(model, method, **pipeline).load()
    app = create_app(pipe, f"promptseg-{__version__}:{method}:{Path(model).name or model}", min_area)
    uvicorn.run(app, host=host, port=port, log_level="info")
