"""README workflows as a user types them, on the real assets in ../shared (skipped when absent).

Fine-tune the official yolov5n.pt on coco128, distil from it with --t_val: the commands of README's
workflow sections at a tiny image size, so they run in seconds on a CPU.
"""
import csv
import subprocess
import sys

import pytest

from conftest import ROOT

SHARED = ROOT.parent / "shared"
COCO128 = SHARED / "datasets" / "coco128" / "coco128.yaml"
YOLOV5N = SHARED / "weights" / "yolov5n.pt"
needs_shared = pytest.mark.skipif(not (COCO128.exists() and YOLOV5N.exists()),
                                  reason="../shared coco128 / yolov5n.pt absent")


def run_cli(script, args, tmp_path):
    cmd = [sys.executable, str(ROOT / script), "--data", str(COCO128), "--img", "128", "--epochs", "1",
           "--batch-size", "16", "--workers", "0", "--device", "cpu", "--noplots",
           "--project", str(tmp_path), *args]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def first_map50(run_dir):
    with open(run_dir / "results.csv", newline="") as f:
        return float(next(csv.DictReader(f))["metrics/mAP_0.5"])


@needs_shared
def test_finetune_official_yolov5n_transfers_everything(tmp_path):
    log = run_cli("train.py", ["--weights", str(YOLOV5N), "--name", "ft"], tmp_path)
    assert "Transferred 349/349" in log, log[-3000:]
    scratch = run_cli("train.py", ["--cfg", "yolov5n.yaml", "--name", "scratch"], tmp_path)
    assert "Transferred" not in scratch
    pretrained_map, scratch_map = first_map50(tmp_path / "ft"), first_map50(tmp_path / "scratch")
    # the COCO weights already detect coco128's objects; one epoch from scratch detects nothing
    assert pretrained_map > 0.05 and pretrained_map > 10 * scratch_map, (pretrained_map, scratch_map)


@needs_shared
def test_distil_from_official_teacher_with_t_val(tmp_path):
    log = run_cli("train_distillation.py", ["--weights", str(YOLOV5N), "--t_weights", str(YOLOV5N),
                                            "--t_val", "--name", "kd"], tmp_path)
    assert "Transferred 349/349" in log
    assert f"Teacher {YOLOV5N}" in log and "mAP@0.5:0.95" in log
    assert (tmp_path / "kd" / "weights" / "best.pt").exists()
