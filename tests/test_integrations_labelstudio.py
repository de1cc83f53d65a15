"""The Label Studio ML backend, over real HTTP: a running `promptseg serve label-studio` answers tasks as Label
Studio posts them; label-studio-converter decodes its brush RLE back to promptseg's masks exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptseg.integrations.labelstudio import brush_rle, parse_config

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["grass", "sand", "water", "sky", "circle", "square", "triangle"]
BRUSH = ('<View><Image name="img" value="$picture"/><BrushLabels name="tag" toName="img">'
         + "".join(f'<Label value="{n}"/>' for n in SHAPES) + "</BrushLabels></View>")
POLYGON = BRUSH.replace("BrushLabels", "PolygonLabels")


@pytest.mark.parametrize("shape, density", [((13, 17), 0.5), ((300, 300), 1.0), ((64, 40), 0.02), ((5, 7), 0.0)])
def test_label_studio_converter_decodes_the_brush_rle_to_the_mask(shape, density):
    from label_studio_converter.brush import decode_rle

    rng = np.random.default_rng(0)
    mask = rng.random(shape) < density
    decoded = decode_rle(brush_rle(mask)).reshape(*shape, 4)
    assert np.array_equal(decoded[:, :, 3] == 255, mask) and set(np.unique(decoded)) <= {0, 255}


def test_the_config_names_the_classes_the_tag_and_the_image():
    control = parse_config(BRUSH)
    assert (control.kind, control.name, control.to_name, control.image_key) == ("BrushLabels", "tag", "img", "picture")
    assert control.labels == SHAPES
    with pytest.raises(ValueError, match="no BrushLabels or PolygonLabels"):
        parse_config('<View><Image name="i" value="$image"/><Choices name="c" toName="i"/></View>')
    with pytest.raises(ValueError, match="no <Image name='other'>"):
        parse_config(BRUSH.replace('toName="img"', 'toName="other"'))


def _post(url: str, payload) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    documents = tmp_path_factory.mktemp("ls_files")
    (documents / "project").mkdir()
    Image.open(ROOT / "examples" / "shapes_test_1.png").save(documents / "one.png")
    Image.open(ROOT / "examples" / "shapes_test_2.png").save(documents / "project" / "two.png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
           "LOCAL_FILES_DOCUMENT_ROOT": str(documents)}
    process = subprocess.Popen([sys.executable, "-m", "promptseg.cli", "serve", "label-studio", "--model", "shapes",
                                "--device", "cpu", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    assert json.loads(response.read())["status"] == "UP"
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read()[-2000:]
                time.sleep(0.5)
        yield url, documents
    finally:
        process.terminate()
        process.wait(timeout=30)


def _expected(path: Path):
    from promptseg import Pipeline
    from promptseg.integrations.supervision import to_detections

    image = Image.open(path)
    return to_detections(Pipeline("shapes", device="cpu").segment(image, SHAPES), classes=SHAPES, min_area=16)


def test_a_task_posted_as_label_studio_posts_it_gets_brush_labels_equal_to_promptsegs_masks(server):
    from label_studio_converter.brush import decode_rle
    from pycocotools import mask as coco_mask

    server, documents = server
    status, answer = _post(server + "/setup", {"project": "3.1733400000", "schema": BRUSH, "hostname": "",
                                               "access_token": "", "model_version": None, "extra_params": None})
    assert status == 200 and answer["model_version"].startswith("promptseg-")
    tasks = [{"id": 11, "data": {"picture": str(documents / "one.png")}},
             {"id": 12, "data": {"picture": "/data/local-files/?d=project/two.png"}}]
    status, answer = _post(server + "/predict", {"tasks": tasks, "project": "3.1733400000", "label_config": BRUSH,
                                                 "params": {"login": None, "password": None, "context": None}})
    assert status == 200 and len(answer["results"]) == 2
    for prediction, name in zip(answer["results"], ["shapes_test_1.png", "shapes_test_2.png"]):
        expected = _expected(ROOT / "examples" / name)
        assert len(prediction["result"]) == len(expected) > 1
        for item, mask, class_id, score in zip(prediction["result"], expected.mask, expected.class_id,
                                               expected.confidence):
            assert (item["type"], item["from_name"], item["to_name"]) == ("brushlabels", "tag", "img")
            assert item["value"]["brushlabels"] == [SHAPES[class_id]] and item["value"]["format"] == "rle"
            h, w = item["original_height"], item["original_width"]
            assert np.array_equal(decode_rle(item["value"]["rle"]).reshape(h, w, 4)[:, :, 3] == 255, mask)
            assert item["score"] == pytest.approx(float(score), abs=1e-4)  # the server runs on one thread
    # without label_config the project's /setup schema is used; polygons for a PolygonLabels project
    assert _post(server + "/predict", {"tasks": tasks[:1], "project": "3"})[0] == 200
    status, answer = _post(server + "/predict", {"tasks": tasks[:1], "label_config": POLYGON})
    expected = _expected(ROOT / "examples" / "shapes_test_1.png")
    assert status == 200 and len(answer["results"][0]["result"]) == len(expected)
    for item, mask in zip(answer["results"][0]["result"], expected.mask):
        assert item["type"] == "polygonlabels" and item["value"]["closed"]
        h, w = mask.shape
        points = np.array(item["value"]["points"]) / 100 * (w, h)  # percent of the image, pixel corners
        drawn = coco_mask.decode(coco_mask.frPyObjects([points.ravel().tolist()], h, w))[..., 0].astype(bool)
        assert (drawn != mask).sum() <= 0.002 * mask.size  # exact but where a cut joins two parts


def test_bad_requests_get_a_clear_json_error(server):
    server, documents = server
    status, answer = _post(server + "/predict", {"tasks": [], "label_config": BRUSH})
    assert status == 400 and "non-empty 'tasks'" in answer["detail"]
    status, answer = _post(server + "/predict", {"tasks": [{"id": 1, "data": {"picture": "x.png"}}], "project": "99"})
    assert status == 400 and "POST /setup first" in answer["detail"]
    tasks = [{"id": 5, "data": {"picture": str(documents / "one.png")}},
             {"id": 6, "data": {"image": "elsewhere.png"}},
             {"id": 7, "data": {"picture": str(ROOT / "examples" / "shapes_test_1.png")}},  # outside the root
             {"id": 8, "data": {"picture": "/data/local-files/?d=../../etc/passwd"}}]
    status, answer = _post(server + "/predict", {"tasks": tasks, "label_config": BRUSH})
    assert status == 422 and [e["task"] for e in answer["errors"]] == [6, 7, 8]
    assert "no data['picture'] image" in answer["errors"][0]["error"]
    assert all("outside LOCAL_FILES_DOCUMENT_ROOT" in e["error"] for e in answer["errors"][1:])
    status, answer = _post(server + "/predict", {"tasks": tasks[:1], "label_config": BRUSH.replace("sand", "Grass")})
    assert status == 400 and "classes cannot be segmented" in answer["detail"]  # "grass" and "Grass": one class
