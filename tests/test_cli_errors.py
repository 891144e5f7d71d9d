"""Every CLI answers a user's mistake with one line on stderr, a non-zero exit and no files written.

Each case runs the script as a user does (a subprocess) and checks: the exit code, exactly one
stderr line `ERROR: ...` naming the file or flag, no traceback, and an unchanged dataset/run tree.
"""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from models.checkpoint import model_checkpoint_fields, save_checkpoint
from models.yolo import Model
from utils.cli import UserError, is_user_error, one_line

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["a", "b"]
TINY = ["--imgsz", "64", "--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: a 4-image dataset (already scanned), checkpoints, bad files and an empty project."""
    root = tmp_path_factory.mktemp("cli")
    for split in ("images", "labels"):
        (root / "data" / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(root / "data/images" / f"{i}.jpg"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        (root / "data/labels" / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.4 0.3\n")
    data = {"path": str(root / "data"), "train": "images", "val": "images", "names": NAMES}
    (root / "data/data.yaml").write_text(yaml.safe_dump(data))
    from utils.datasets import create_dataloader
    create_dataloader(str(root / "data/images"), 64, 2, 32, nc=len(NAMES))  # the label cache exists before the snapshots
    w = root / "weights"
    w.mkdir()
    student = Model("yolov5n.yaml", nc=len(NAMES))
    student.names = list(NAMES)
    fields = model_checkpoint_fields(student)
    run_opt = {"epochs": 3, "data": str(root / "data/data.yaml"), "cfg": "yolov5n.yaml", "weights": ""}
    save_checkpoint(w / "student.pt", fields)
    save_checkpoint(w / "best.pt", {**fields, "epoch": 0, "opt": run_opt})  # stripped: no optimizer
    save_checkpoint(w / "plain_last.pt", {**fields, "epoch": 0, "opt": run_opt,
                                          "optimizer": {"state": {}, "param_groups": []}})
    teacher = Model("yolov5n.yaml", nc=3)
    teacher.names = ["x", "y", "z"]
    save_checkpoint(w / "teacher_nc3.pt", model_checkpoint_fields(teacher))
    (w / "notes.txt").write_text("not a checkpoint\n")
    (root / "bad.yaml").write_text("train: [images\nval: images\n")
    (root / "evil.yaml").write_text(f"train: !!python/object/apply:os.system ['touch {root / 'PWNED'}']\n")
    (root / "proj").mkdir()
    return root


def _cases():
    """(id, script, args with {ws} for the workspace, expected exit code, text the error line names)."""
    data, w = "{ws}/data/data.yaml", "{ws}/weights"
    train = ["--data", data, "--epochs", "1", *TINY, "--project", "{ws}/proj"]
    val = ["--data", data, "--weights", f"{w}/student.pt", *TINY[:4], "--project", "{ws}/proj"]
    detect = ["--weights", f"{w}/student.pt", "--source", "{ws}/data/images", "--imgsz", "64", "--device", "cpu",
              "--project", "{ws}/proj"]
    return [
        ("train-missing-data", "train.py", [*train, "--data", "{ws}/missing.yaml"], 1, "missing.yaml"),
        ("train-yaml-syntax", "train.py", [*train, "--data", "{ws}/bad.yaml"], 1, "bad.yaml"),
        ("train-yaml-python-tag", "train.py", [*train, "--data", "{ws}/evil.yaml"], 1, "evil.yaml"),
        ("train-hyp-syntax", "train.py", [*train, "--hyp", "{ws}/bad.yaml"], 1, "bad.yaml"),
        ("train-missing-cfg", "train.py", [*train, "--cfg", "yolov5q.yaml"], 1, "yolov5q.yaml"),
        ("train-missing-weights", "train.py", [*train, "--weights", "yolov5s.pt"], 1, "--weights yolov5s.pt"),
        ("train-weights-not-ckpt", "train.py", [*train, "--weights", f"{w}/notes.txt"], 1, "notes.txt"),
        ("train-epochs-0", "train.py", [*train, "--epochs", "0"], 1, "--epochs 0"),
        ("train-batch-negative", "train.py", [*train, "--batch-size", "-1"], 1, "--batch-size -1"),
        ("train-epochs-not-int", "train.py", [*train, "--epochs", "x"], 2, "--epochs"),
        ("train-resume-best", "train.py", ["--resume", f"{w}/best.pt"], 1, "best.pt"),
        ("distill-teacher-nc", "train_distillation.py", [*train, "--cfg", "yolov5n.yaml", "--batch-size", "4",
                                                          "--t_weights", f"{w}/teacher_nc3.pt"], 1, "nc=3"),
        ("distill-missing-teacher", "train_distillation.py", [*train, "--t_weights", f"{w}/nope.pt"], 1, "nope.pt"),
        ("distill-resume-plain", "train_distillation.py", ["--resume", f"{w}/plain_last.pt"], 1, "train.py"),
        ("distill-pseudo-nothing-unlabeled", "train_distillation.py",  # issue 27: was a silent column of zeros
         [*train, "--batch-size", "4", "--t_weights", f"{w}/student.pt", "--d_pseudo", "0.5"], 1,
         "--d_pseudo 0.5: there are no unlabeled images"),
        ("val-missing-data", "val.py", [*val, "--data", "{ws}/missing.yaml"], 1, "missing.yaml"),
        ("val-missing-weights", "val.py", [*val, "--weights", f"{w}/nope.pt"], 1, "nope.pt"),
        ("val-weights-not-ckpt", "val.py", [*val, "--weights", f"{w}/notes.txt"], 1, "notes.txt"),
        ("val-yaml-python-tag", "val.py", [*val, "--data", "{ws}/evil.yaml"], 1, "evil.yaml"),
        ("detect-missing-source", "detect.py", [*detect, "--source", "{ws}/nothing"], 1, "nothing"),
        ("detect-weights-not-ckpt", "detect.py", [*detect, "--weights", f"{w}/notes.txt"], 1, "notes.txt"),
        ("detect-conf-thres", "detect.py", [*detect, "--conf-thres", "2"], 1, "--conf-thres"),
        ("export-missing-weights", "export.py", ["--weights", f"{w}/nope.pt", "--project", "{ws}/proj"], 1,
         "nope.pt"),
        ("export-bad-format", "export.py", ["--weights", f"{w}/student.pt", "--include", "tflite", "--project",
                                            "{ws}/proj"], 1, "--include"),
        ("compare-missing-run", "compare.py", ["{ws}/proj/nope"], 1, "nope"),
        ("compare-bad-noise", "compare.py", ["{ws}/proj", "--noise", "-1"], 1, "--noise"),
    ]


def _tree(root):
    """Every path under root with its size and modification time (files) - what a failed run must not change."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in root.rglob("*")}


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_user_error_is_one_line(ws, case):
    _, script, args, code, named = case
    args = [a.replace("{ws}", str(ws)) for a in args]
    before = _tree(ws)
    out = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    print(f"{script} | {case[0]} | {lines[0] if lines else ''}")  # shown with -rP: the table of messages
    assert out.returncode == code, out.stdout[-2000:] + out.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), out.stderr[-3000:]
    assert named in lines[0]
    assert "Traceback" not in out.stderr
    assert _tree(ws) == before  # no run folder, no rewritten file, no cache, and the YAML ran nothing


def test_detect_skips_an_unreadable_image(ws, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "good.jpg"), np.full((64, 64, 3), 127, np.uint8))
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    out = subprocess.run([sys.executable, str(ROOT / "detect.py"), "--weights", str(ws / "weights/student.pt"),
                          "--source", str(images), "--imgsz", "64", "--device", "cpu", "--project", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "WARNING: cannot read image" in out.stdout and "broken.jpg" in out.stdout
    assert (tmp_path / "exp" / "good.jpg").is_file() and not (tmp_path / "exp" / "broken.jpg").exists()


def _raise(exc):
    try:
        raise exc
    except BaseException as e:
        return e


def test_only_user_errors_lose_their_traceback():
    from models.checkpoint import UnsafeCheckpointError
    assert is_user_error(_raise(UserError("--epochs 0: must be >= 1")))
    assert is_user_error(_raise(FileNotFoundError("x.pt")))
    assert is_user_error(_raise(UnsafeCheckpointError("x.pt references os.system")))
    try:
        torch.zeros(2).view(3)  # a ValueError/RuntimeError from inside a library is a bug
    except (RuntimeError, ValueError) as e:
        assert not is_user_error(e)
    for bug in (lambda: int("three"), lambda: np.zeros(2).reshape(3)):  # not a `raise` of the project
        try:
            bug()
        except ValueError as e:
            assert not is_user_error(e)
    for bug in (AttributeError("x"), TypeError("x"), KeyError("x"), RuntimeError("x")):
        assert not is_user_error(_raise(bug))
    from distill.teacher import TeacherMismatchError
    from models.yolo import ModelSizeError
    from utils.label_cache import DatasetError
    for cls in (DatasetError, TeacherMismatchError, ModelSizeError):  # the project's user errors
        assert is_user_error(_raise(cls("x")))
    assert one_line("Dataset not found: a missing.\n  Check `path` in d.yaml.\n") == \
        "Dataset not found: a missing. Check `path` in d.yaml."


def test_interrupted_save_leaves_no_temp_file(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last.pt", {"epoch": 0})
    assert not list(tmp_path.iterdir())


def test_an_invariant_failing_inside_project_code_keeps_its_traceback(monkeypatch):
    """A plain ValueError raised by the project's own code is a bug, not a user's mistake."""
    from models.yolo import Model
    from utils.cli import run_cli
    from utils.files import yaml_load
    from utils.loss import ComputeLoss
    model = Model("yolov5n.yaml", nc=2)
    model.hyp = yaml_load(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")
    loss = ComputeLoss(model)
    preds = model(torch.zeros(1, 3, 64, 64))
    error = _raise_from(lambda: loss(preds[:2], torch.zeros(0, 6)))
    assert isinstance(error, ValueError) and "prediction levels" in str(error)
    assert not is_user_error(error)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(ValueError, match="prediction levels"):  # propagates: the traceback is printed
        run_cli(lambda opt: loss(preds[:2], torch.zeros(0, 6)), lambda: None)


def _raise_from(fn):
    try:
        fn()
    except Exception as e:
        return e
