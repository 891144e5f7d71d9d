"""val.py: reproduces the original YOLOv5 metrics on real data, and its CLI outputs on the tiny set."""
import json
from pathlib import Path

import pytest
import torch

import val
from conftest import ROOT
from models.checkpoint import save_checkpoint
from models.yolo import Model

SHARED = ROOT.parent / "shared"
COCO128 = SHARED / "datasets" / "coco128" / "coco128.yaml"
YOLOV5N = SHARED / "weights" / "yolov5n.pt"
# original YOLOv5 v7.0 val.py, yolov5n.pt, coco128 at 320 (../shared/README.md)
REFERENCE_320 = {"mAP50": 0.454, "mAP50-95": 0.289}


@pytest.mark.skipif(not (COCO128.exists() and YOLOV5N.exists()), reason="../shared coco128 / yolov5n.pt absent")
def test_reproduces_official_yolov5n_on_coco128(tmp_path):
    # Rectangular batches give each image the padding of its batch; images with equal aspect ratios
    # are ordered by numpy's default argsort, as in the original code, so a few images may land in a
    # neighbouring batch on another machine. That is worth ~0.005 mAP here, inside the 0.01 asked.
    (p, r, map50, map_, *_), maps, _ = val.run(str(COCO128), weights=str(YOLOV5N), batch_size=16, imgsz=320,
                                             device="cpu", workers=0, plots=False, project=tmp_path)
    assert abs(map50 - REFERENCE_320["mAP50"]) < 0.01, map50
    assert abs(map_ - REFERENCE_320["mAP50-95"]) < 0.01, map_
    assert maps.shape == (80,)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tiny_data):
    """A random yolov5n for the tiny set's 8 classes, in the project's checkpoint format."""
    from utils.synthetic import CLASS_NAMES
    torch.manual_seed(0)
    model = Model(ROOT / "models" / "yolov5n.yaml", nc=len(CLASS_NAMES)).eval()
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_yaml": model.yaml, "names": list(CLASS_NAMES),
                           "nc": len(CLASS_NAMES)})
    return path


def run_cli(args):
    return val.main(val.parse_opt(args))


def test_cli_writes_txt_json_and_plots(tiny_data, tiny_weights, tmp_path):
    # a random model flooded with boxes: low thresholds still give every image some detections
    results, maps, times = run_cli(["--data", str(tiny_data), "--weights", str(tiny_weights), "--imgsz", "64",
                                    "--batch-size", "4", "--device", "cpu", "--workers", "0", "--project",
                                    str(tmp_path), "--save-txt", "--save-conf", "--save-json", "--verbose"])
    run = tmp_path / "exp"
    assert len(results) == 7 and len(times) == 3 and maps.shape == (8,)
    txts = sorted((run / "labels").glob("*.txt"))
    assert txts, "no --save-txt labels"
    rows = [line.split() for line in txts[0].read_text().splitlines()]
    assert all(len(r) == 6 for r in rows)  # cls xc yc w h conf
    assert all(0 <= float(v) <= 1 for r in rows for v in r[1:5])
    preds = json.loads(next(run.glob("*_predictions.json")).read_text())
    assert preds and set(preds[0]) == {"image_id", "category_id", "bbox", "score"}
    for f in ("confusion_matrix.png", "val_batch0_labels.jpg", "val_batch0_pred.jpg"):
        assert (run / f).exists(), f  # PR/F1 curves need at least one true positive, as in YOLOv5


def test_task_speed_and_refusals(tiny_data, tiny_weights, tmp_path):
    common = ["--data", str(tiny_data), "--weights", str(tiny_weights), "--imgsz", "64", "--device", "cpu",
              "--workers", "0", "--project", str(tmp_path), "--noplots"]
    results, _, times = run_cli(common + ["--task", "speed"])
    assert all(t >= 0 for t in times)
    with pytest.raises(ValueError, match="no 'test' split"):
        run_cli(common + ["--task", "test"])
    with pytest.raises(SystemExit):
        val.parse_opt(["--task", "bogus"])


def test_class_count_mismatch_is_refused(tiny_data, tmp_path):
    model = Model(ROOT / "models" / "yolov5n.yaml", nc=3).eval()
    path = tmp_path / "nc3.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_yaml": model.yaml, "names": ["a", "b", "c"],
                           "nc": 3})
    with pytest.raises(ValueError, match="3 classes but .*nc=8"):
        val.run(str(tiny_data), weights=str(path), imgsz=64, device="cpu", workers=0, plots=False,
                project=tmp_path)
