"""Shared pytest setup: run the project from its root, like a YOLOv5 user does."""
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest
import yaml

@pytest.fixture(autouse=True)
def _pristine_project_logger():
    """Give every test the 'yolov5' logger as a fresh process has it. In-process CLI runs (also inside
    module- or session-scoped fixtures, which run before any function fixture) attach a stdout handler
    and stop propagation (setup_cli_logging), which would hide later records from caplog."""
    logger = logging.getLogger("yolov5")

    def reset():
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)

    reset()
    yield
    reset()


TINY_SYNTHETIC = {"n_train": 16, "n_val": 8, "imgsz": 64, "seed": 0, "max_objects": 4}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A dataset YAML for a tiny copy of the embedded synthetic set (generated once per session)."""
    from utils.synthetic import CLASS_NAMES
    root = tmp_path_factory.mktemp("tiny_synthetic")
    cfg = {"path": str(root / "data"), "train": "images/train", "val": "images/val",
           "names": list(CLASS_NAMES), "synthetic": dict(TINY_SYNTHETIC)}
    yaml_file = root / "tiny.yaml"
    yaml_file.write_text(yaml.safe_dump(cfg))
    return yaml_file


@pytest.fixture(scope="session")
def tiny_seg_data(tmp_path_factory):
    """The tiny synthetic set with YOLO-seg polygon labels (the same images)."""
    from utils.synthetic import CLASS_NAMES
    root = tmp_path_factory.mktemp("tiny_synthetic_seg")
    cfg = {"path": str(root / "data"), "train": "images/train", "val": "images/val",
           "names": list(CLASS_NAMES), "synthetic": {**TINY_SYNTHETIC, "polygons": True}}
    yaml_file = root / "tiny-seg.yaml"
    yaml_file.write_text(yaml.safe_dump(cfg))
    return yaml_file


def tiny_train_args(data, project, name, epochs=2, extra=()):
    """train.py flags for a seconds-long CPU run on the tiny dataset."""
    return ["--data", str(data), "--cfg", "yolov5n.yaml", "--epochs", str(epochs), "--imgsz", "64",
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", str(project),
            "--name", name, "--noplots", *extra]


class Interrupted(Exception):
    """A training run cut off right after its first epoch's checkpoint."""


def run_cut_after_first_epoch(monkeypatch, run, argv):
    """`run(argv)` dies right after saving epoch 0's checkpoint, as if the machine died there."""
    from utils.trainer import Trainer
    save = Trainer._save

    def save_then_crash(self, epoch, fi):
        save(self, epoch, fi)
        if epoch == 0:
            raise Interrupted
    monkeypatch.setattr(Trainer, "_save", save_then_crash)
    with pytest.raises(Interrupted):
        run(argv)
    monkeypatch.setattr(Trainer, "_save", save)
