import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptseg.eval.runner import EvalRun, evaluate

ROOT = Path(__file__).resolve().parents[1]


def _run(tiny_folder, out, **kw):
    settings = {"background_threshold": None}
    return evaluate(EvalRun(dataset="shapes", model=str(tiny_folder), out=str(out), limit=5, device="cpu",
                            settings=settings, **kw), progress=False)


def test_report_has_the_fields_and_per_image_records(tiny_folder, tmp_path):
    report = _run(tiny_folder, tmp_path / "a", save_vis=2)
    for key in ("dataset", "method", "model", "n_images", "miou", "macc", "per_class_iou", "seconds_per_image", "settings"):
        assert key in report
    assert report["n_images"] == 5 and report["dataset"] == "shapes"
    assert set(report["per_class_iou"]) == {"grass", "sand", "water", "sky", "circle", "square", "triangle"}
    assert 0 <= report["miou"] <= 1
    assert len(list((tmp_path / "a" / "images").glob("*.json"))) == 5
    assert len(list((tmp_path / "a" / "vis").glob("*.png"))) == 2
    md = (tmp_path / "a" / "report.md").read_text()
    assert "mIoU" in md and "| circle |" in md
    assert json.loads((tmp_path / "a" / "report.json").read_text()) == report


def test_name_modes(tiny_folder, tmp_path):
    oracle = _run(tiny_folder, tmp_path / "o")
    everything = _run(tiny_folder, tmp_path / "all", names="all")
    assert oracle["names"] == "oracle" and everything["names"] == "all"
    records = [json.loads(p.read_text()) for p in (tmp_path / "all" / "images").glob("*.json")]
    assert all(r["classes"] == list(range(7)) for r in records)
    table = tmp_path / "names.json"
    table.write_text(json.dumps({"test_00000": ["circle", "grass"]}))
    custom = _run(tiny_folder, tmp_path / "c", names=str(table))
    first = json.loads((tmp_path / "c" / "images" / "test_00000.json").read_text())
    assert first["classes"] == [0, 4] and custom["n_images"] == 5
    table.write_text(json.dumps({"test_00000": ["hexagon"]}))
    with pytest.raises(ValueError, match="hexagon"):
        _run(tiny_folder, tmp_path / "bad", names=str(table))


def test_resuming_with_other_settings_is_refused(tiny_folder, tmp_path):
    _run(tiny_folder, tmp_path / "r")
    with pytest.raises(ValueError, match=r"other \['settings'\]"):
        evaluate(EvalRun(dataset="shapes", method="baseline", model=str(tiny_folder), out=str(tmp_path / "r"), limit=5,
                         settings={"background_threshold": None, "timestep": 50}), progress=False)


def _cli(tiny_folder, out, limit, extra=()):
    return [sys.executable, "-m", "promptseg.cli", "eval", "--dataset", "shapes", "--model", str(tiny_folder),
            "--limit", str(limit), "--out", str(out), "--device", "cpu", "--set", "background_threshold=null", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def test_killed_run_resumes_to_the_same_numbers(tiny_folder, tmp_path):
    n = 40  # long enough that the kill lands part-way on a fast machine too
    whole = _run_cli_ok(_cli(tiny_folder, tmp_path / "whole", n))
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(tiny_folder, out, n), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "images").glob("*.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "images").glob("*.json")))
    assert 3 <= done < n, "the run must be killed part-way for this test to mean anything"
    assert not (out / "report.json").exists()
    _run_cli_ok(_cli(tiny_folder, out, n))
    a = json.loads((tmp_path / "whole" / "report.json").read_text())
    b = json.loads((out / "report.json").read_text())
    assert a["n_images"] == b["n_images"] == n
    assert a["miou"] == b["miou"] and a["per_class_iou"] == b["per_class_iou"] and a["macc"] == b["macc"]
    assert whole


def _run_cli_ok(cmd):
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_two_processes_give_the_numbers_of_one(tiny_folder, tmp_path):
    pytest.importorskip("accelerate")
    n = 7  # uneven shards: 4 + 3
    _run_cli_ok(_cli(tiny_folder, tmp_path / "one", n))
    import socket

    with socket.socket() as sock:  # a free port, so the test never collides with another process group
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port), "-m", "promptseg.cli"]
    _run_cli_ok(launch + _cli(tiny_folder, tmp_path / "two", n)[3:])
    a = json.loads((tmp_path / "one" / "report.json").read_text())
    b = json.loads((tmp_path / "two" / "report.json").read_text())
    assert b["processes"] == 2 and a["processes"] == 1
    assert a["n_images"] == b["n_images"] == n
    assert a["miou"] == b["miou"] and a["per_class_iou"] == b["per_class_iou"]
    assert len(list((tmp_path / "two" / "images").glob("*.json"))) == n


def test_vocabulary_runs_report_the_filter_against_the_ground_truth(tmp_path):
    report = evaluate(EvalRun(dataset="shapes", model="shapes", out=str(tmp_path / "v"), limit=4, device="cpu",
                              names="all", filter="clip", filter_settings={"model": "shapes-clip"}), progress=False)
    assert report["filter"] == "clip" and report["filter_settings"]["model"] == "shapes-clip"
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "v" / "images").glob("*.json"))]
    hits = sum(len(set(r["kept"]) & set(r["present"])) for r in records)
    assert report["filter_recall_pooled"] == pytest.approx(hits / sum(len(r["present"]) for r in records))
    assert report["filter_precision_pooled"] == pytest.approx(hits / sum(len(r["kept"]) for r in records))
    per_image = [len(set(r["kept"]) & set(r["present"])) / len(r["present"]) for r in records]
    assert report["filter_recall"] == pytest.approx(sum(per_image) / 4)
    assert all(r["classes"] == list(range(7)) and set(r["kept"]) <= set(r["classes"]) for r in records)
    assert "class filter: `clip`" in (tmp_path / "v" / "report.md").read_text()
    oracle = evaluate(EvalRun(dataset="shapes", model="shapes", out=str(tmp_path / "o"), limit=2, device="cpu"),
                      progress=False)
    assert oracle["filter"] == "none" and oracle["filter_precision"] == oracle["filter_recall"] == 1.0
