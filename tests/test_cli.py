import json

import numpy as np
import pytest
from PIL import Image

from promptseg import __version__
from promptseg.api import split_cli_labels
from promptseg.cli import main
from promptseg.data.base import read_class_names
from promptseg.io.rle import decode_rle


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 30), (25, 50)]):
        path = tmp_path / "in" / f"img{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def test_segment_writes_all_four_outputs(tiny_folder, images, tmp_path, capsys):
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"")
    out = tmp_path / "out"
    code = main(["segment", str(images[0]), str(broken), str(images[1]), "--labels", "cat,person|people",
                 "--model", str(tiny_folder), "--out", str(out), "--device", "cpu", "--set", "timestep=50",
                 "--filter", "none"])  # every label kept: this test is about the files (tests/test_filters.py: filters)
    captured = capsys.readouterr()
    assert code == 1  # one file failed ...
    assert "broken.png" in captured.err and "wrote 2 of 3" in captured.out  # ... and the others were written
    for path in images:
        stem = path.stem
        label_map = np.asarray(Image.open(out / f"{stem}.png"))
        h, w = np.asarray(Image.open(path)).shape[:2]
        assert Image.open(out / f"{stem}.png").mode == "P" and label_map.shape == (h, w)
        assert Image.open(out / f"{stem}_overlay.png").size[0] == w
        scores = np.load(out / f"{stem}_scores.npz")
        assert scores["scores"].shape == (3, h, w) and scores["labels"].tolist() == ["background", "cat", "person"]
        masks = json.loads((out / f"{stem}_masks.json").read_text())
        assert masks["labels"] == ["background", "cat", "person"]
        for entry in masks["masks"]:
            assert np.array_equal(decode_rle(entry["segmentation"]), label_map == entry["id"])
        assert sum(m["area"] for m in masks["masks"]) == h * w


def test_methods_and_version(capsys):
    assert main(["methods"]) == 0
    assert "baseline" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out


def test_bad_labels_fail_before_loading_a_model(images, capsys):
    assert main(["segment", str(images[0]), "--labels", "cat,,dog", "--model", "/nonexistent"]) == 2
    assert "label 1" in capsys.readouterr().err
    assert main(["segment", str(images[0]), "--labels", "cat,cat", "--model", "/nonexistent"]) == 2
    assert "duplicate label 'cat'" in capsys.readouterr().err
    assert main(["segment", str(images[0]), "--labels", "cat", "--model", "/nonexistent"]) == 2
    assert "/nonexistent" in capsys.readouterr().err


def test_label_helpers(tmp_path):
    assert split_cli_labels("cat, person|people") == ["cat", "person, people"]
    f = tmp_path / "classes.txt"
    f.write_text("background, sky, wall\n\n# comment\ncat\n")
    assert read_class_names(f) == ["background, sky, wall", "cat"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_class_names(tmp_path / "nope.txt")


def test_caption_reaches_fastseg_and_invseg_refuses_one(tiny_folder, images, tmp_path, capsys):
    out = tmp_path / "fast"
    code = main(["segment", str(images[0]), "--labels", "cat,dog", "--method", "fastseg", "--caption", "a red cat",
                 "--model", str(tiny_folder), "--out", str(out), "--device", "cpu"])
    assert code == 0 and (out / "img0_masks.json").exists()
    code = main(["segment", str(images[0]), "--labels", "cat,dog", "--method", "invseg", "--caption", "a red cat",
                 "--model", str(tiny_folder), "--out", str(tmp_path / "inv"), "--device", "cpu",
                 "--set", 'loss_cross_weights={"1.0": 1}', "--set", 'loss_self_weights={"1.0": 1}'])
    assert code == 2 and "invseg" in capsys.readouterr().err


def test_a_class_name_file_may_share_words_across_lines(tiny_folder, images, tmp_path, capsys):
    """A dataset's list (ADE20K-847 has "screen" in five lines) is read as the eval runner reads it; typed labels
    that repeat a word stay an error."""
    names = tmp_path / "names.txt"
    names.write_text("cat, pet\ndog, pet\n")
    out = tmp_path / "out"
    assert main(["segment", str(images[0]), "--labels-file", str(names), "--model", str(tiny_folder), "--out",
                 str(out), "--device", "cpu", "--filter", "none"]) == 0
    assert json.loads((out / f"{images[0].stem}_masks.json").read_text())["labels"] == ["background", "cat", "dog"]
    assert main(["segment", str(images[0]), "--labels", "cat|pet,dog|pet", "--model", "/nonexistent"]) == 2
    assert "duplicate label 'pet'" in capsys.readouterr().err
