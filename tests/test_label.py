"""`promptseg label`: inputs, the COCO dataset it writes (loaded by pycocotools, masks equal to `segment`'s), the
semantic maps, skipped files, refusal of other settings, kill-and-resume and two processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptseg.cli import main
from promptseg.io.rle import decode_rle
from promptseg.labelling import collect_images, semantic_names

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = "cat,person|people,grass,sky"


def make_folder(folder: Path, n: int, seed: int = 0) -> Path:
    """`n` random images in `folder` and a subfolder, plus a text file that is no image."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / ("sub" if i % 3 == 2 else "") / f"img{i:02d}.{'jpg' if i % 4 == 1 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((24 + 4 * (i % 3), 32, 3)) * 255).astype(np.uint8)).save(path)
    (folder / "notes.txt").write_text("not an image")
    return folder


def label_cli(tiny_folder, inputs, out, *extra):
    return ["label", *map(str, inputs), "--labels", VOCABULARY, "--model", str(tiny_folder), "--out", str(out),
            "--device", "cpu", "--filter", "none", "--set", "background_threshold=0.5", *extra]


def test_inputs_are_walked_filtered_and_sorted(tmp_path):
    folder = make_folder(tmp_path / "photos", 6)
    root, files = collect_images([folder])
    relative = [p.relative_to(root).as_posix() for p in files]
    assert root == folder.resolve() and relative == sorted(relative) and len(files) == 6
    assert "notes.txt" not in relative and "sub/img02.png" in relative
    root, files = collect_images([str(folder / "*.png"), folder / "sub" / "img05.jpg"])
    assert [p.relative_to(root).as_posix() for p in files] == ["img00.png", "img03.png", "img04.png", "sub/img05.jpg"]
    with pytest.raises(FileNotFoundError, match="nowhere.png: no such file or folder"):
        collect_images([tmp_path / "nowhere.png"])
    with pytest.raises(ValueError, match="no image files"):
        collect_images([str(folder / "*.txt")])  # matches a file, but no image
    assert semantic_names(["a.jpg", "a.png", "b/c.webp"]) == ["a.jpg.png", "a.png.png", "b/c.png"]


def test_the_dataset_loads_with_pycocotools_and_its_masks_are_what_segment_draws(tiny_folder, tmp_path, capsys):
    from pycocotools.coco import COCO

    folder = make_folder(tmp_path / "photos", 4)
    (folder / "empty.png").write_bytes(b"")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "ds"
    assert main(label_cli(tiny_folder, [folder], out, "--min-area", "0")) == 0
    printed = capsys.readouterr()
    assert "labelled 4 image(s), skipped 2" in printed.out and "empty.png" in printed.err

    coco = COCO(str(out / "annotations.json"))
    names = [c["name"] for c in coco.loadCats(coco.getCatIds())]
    assert names == ["cat", "person", "grass", "sky"]  # one category per line: "people" is person's synonym
    assert coco.loadCats(2)[0]["synonyms"] == ["person", "people"]
    assert (out / "classes.txt").read_text().split() == ["background", "cat", "person", "grass", "sky"]
    skipped = json.loads((out / "skipped.json").read_text())
    assert {s["file_name"] for s in skipped} == {"empty.png", "broken.jpg"}
    assert all(s["reason"] for s in skipped) and "0 bytes" in next(s for s in skipped if s["file_name"] == "empty.png")["reason"]

    images = coco.loadImgs(coco.getImgIds())
    assert [i["file_name"] for i in images] == sorted(i["file_name"] for i in images)
    for info in images:
        seg = tmp_path / "seg" / Path(info["file_name"]).stem
        assert main(["segment", str(folder / info["file_name"]), "--labels", VOCABULARY, "--model", str(tiny_folder),
                     "--out", str(seg), "--device", "cpu", "--filter", "none", "--set", "background_threshold=0.5"]) == 0
        drawn = np.asarray(Image.open(seg / f"{Path(info['file_name']).stem}.png"))
        labels = json.loads((seg / f"{Path(info['file_name']).stem}_masks.json").read_text())["labels"]
        ids = {"background": 0, "cat": 1, "person": 2, "grass": 3, "sky": 4}
        expected = np.array([ids[name] for name in labels])[drawn]
        semantic = np.asarray(Image.open(out / info["semantic_file"]))
        assert np.array_equal(semantic, expected)
        rebuilt = np.zeros_like(expected)
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=info["id"])):
            mask = coco.annToMask(annotation).astype(bool)
            assert np.array_equal(mask, decode_rle(annotation["segmentation"]))
            assert annotation["area"] == mask.sum() and annotation["iscrowd"] == 0 and 0 <= annotation["score"] <= 1
            x, y, w, h = annotation["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert not rebuilt[mask].any()  # annotations never overlap
            rebuilt[mask] = annotation["category_id"]
        assert np.array_equal(rebuilt, expected)  # min-area 0: every pixel's class is in the annotations


def test_other_settings_into_the_same_folder_are_refused(tiny_folder, tmp_path, capsys):
    folder = make_folder(tmp_path / "photos", 2)
    assert main(label_cli(tiny_folder, [folder], tmp_path / "ds")) == 0
    assert main(label_cli(tiny_folder, [folder], tmp_path / "ds", "--min-area", "3")) == 2
    assert "holds a run with other ['min_area']" in capsys.readouterr().err
    assert main(label_cli(tiny_folder, [folder], tmp_path / "ds2", "--min-area", "-1")) == 2
    assert "min_area must be >= 0" in capsys.readouterr().err


def test_bundled_model_labels_the_examples_with_an_annotation_per_image(tmp_path):
    from pycocotools.coco import COCO

    vocabulary = ROOT / "src" / "promptseg" / "data" / "classnames" / "shapes.txt"
    assert main(["label", str(ROOT / "examples"), "--labels-file", str(vocabulary), "--model", "shapes",
                 "--out", str(tmp_path / "ds"), "--device", "cpu"]) == 0
    coco = COCO(str(tmp_path / "ds" / "annotations.json"))
    assert len(coco.getCatIds()) == 7 and len(coco.getImgIds()) == 3
    assert all(coco.getAnnIds(imgIds=i) for i in coco.getImgIds())
    things = {c["id"] for c in coco.loadCats(coco.getCatIds()) if c["supercategory"] == "thing"}
    assert {c["name"] for c in coco.loadCats(things)} == {"circle", "square", "triangle"}
    assert any(a["category_id"] in things for a in coco.loadAnns(coco.getAnnIds()))


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _run_ok(cmd):
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_killed_and_sharded_runs_write_the_dataset_of_one_uninterrupted_run(tiny_folder, tmp_path):
    pytest.importorskip("accelerate")
    folder = make_folder(tmp_path / "photos", 40)
    (folder / "empty.png").write_bytes(b"")
    cli = [sys.executable, "-m", "promptseg.cli"]
    _run_ok(cli + label_cli(tiny_folder, [folder], tmp_path / "whole"))
    whole = json.loads((tmp_path / "whole" / "annotations.json").read_text())

    out = tmp_path / "killed"
    proc = subprocess.Popen(cli + label_cli(tiny_folder, [folder], out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "records").glob("*.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "records").glob("*.json")))
    assert 3 <= done < 41, "the run must be killed part-way for this test to mean anything"
    assert not (out / "annotations.json").exists()
    _run_ok(cli + label_cli(tiny_folder, [folder], out))
    assert json.loads((out / "annotations.json").read_text()) == whole

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port), "-m", "promptseg.cli"]
    _run_ok(launch + label_cli(tiny_folder, [folder], tmp_path / "two", "--format", "coco,yolo-seg"))
    assert json.loads((tmp_path / "two" / "annotations.json").read_text()) == whole
    _run_ok(cli + label_cli(tiny_folder, [folder], tmp_path / "whole", "--format", "yolo-seg"))  # nothing relabelled
    labels = sorted((tmp_path / "whole" / "yolo" / "labels").rglob("*.txt"))
    assert len(labels) == 40 and [p.read_text() for p in labels] == [
        (tmp_path / "two" / p.relative_to(tmp_path / "whole")).read_text() for p in labels]
    assert json.loads((tmp_path / "two" / "skipped.json").read_text()) == json.loads(
        (tmp_path / "whole" / "skipped.json").read_text())
    assert len(whole["images"]) == 40 and whole["annotations"]
