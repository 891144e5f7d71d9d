"""val.py: reproduces the original YOLOv5 metrics on real data, and its CLI outputs on the tiny set."""
import json

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
REFERENCE_320 = {"P": 0.491, "R": 0.430, "mAP50": 0.454, "mAP50-95": 0.289}


@pytest.mark.skipif(not (COCO128.exists() and YOLOV5N.exists()), reason="../shared coco128 / yolov5n.pt absent")
def test_reproduces_official_yolov5n_on_coco128(tmp_path):
    # The same resizing (v7.0 truncates the resized size) and batching give the same figures to the
    # printed digits. Images with equal aspect ratios are ordered by numpy's default argsort, as in the
    # original code, so on another machine a few may land in a neighbouring batch (~0.005 mAP).
    (p, r, map50, map_, *_), maps, _ = val.run(str(COCO128), weights=str(YOLOV5N), batch_size=16, imgsz=320,
                                             device="cpu", workers=0, plots=False, project=tmp_path)
    assert abs(map50 - REFERENCE_320["mAP50"]) < 0.01, map50
    assert abs(map_ - REFERENCE_320["mAP50-95"]) < 0.01, map_
    assert abs(p - REFERENCE_320["P"]) < 0.02 and abs(r - REFERENCE_320["R"]) < 0.02, (p, r)
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


# ----------------------------------------------------------------------------- evaluate() as a library
@pytest.fixture(scope="module")
def tiny_loader(tiny_data):
    from utils.dataset_yaml import check_dataset
    from utils.evaluate import build_loader
    return build_loader(check_dataset(str(tiny_data)), "val", imgsz=64, batch_size=4, stride=32, workers=0)


def model_snapshot(model):
    return ([type(m).__name__ for m in model.modules()], [m.training for m in model.modules()],
            {k: (v.dtype, v.clone()) for k, v in model.state_dict().items()})


@pytest.mark.parametrize("dtype,mode", [(torch.float32, "train"), (torch.float16, "eval"), (torch.float32, "mixed")])
def test_evaluate_leaves_the_model_exactly_as_found(tiny_loader, dtype, mode):
    from utils.evaluate import evaluate
    from utils.loss import ComputeLoss
    torch.manual_seed(0)
    model = Model(ROOT / "models" / "yolov5n.yaml", nc=8)
    model.hyp = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0)
    compute_loss = ComputeLoss(model)
    model.train(mode == "train")
    if mode == "mixed":
        model.train()
        model.model[2].eval()
        model.model[-1].eval()
    model.to(dtype)
    types, modes, state = model_snapshot(model)
    res = evaluate(model, tiny_loader, half=True, compute_loss=compute_loss)
    assert res.seen == 8 and all(x > 0 for x in res.losses)  # it really ran, loss included
    after_types, after_modes, after_state = model_snapshot(model)
    assert after_types == types  # nothing fused (BatchNorm modules still there)
    assert after_modes == modes
    assert after_state.keys() == state.keys()
    for k, (dt, v) in state.items():
        assert after_state[k][0] == dt and torch.equal(after_state[k][1], v), k


def test_half_inference_runs_on_a_copy():
    """The trainer's fp32 EMA must never be cast to fp16 in place (its small updates would round away)."""
    from utils.evaluate import _inference_model
    model = Model(ROOT / "models" / "yolov5n.yaml", nc=8)
    half = _inference_model(model, half=True)
    assert half is not model and next(half.parameters()).dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert _inference_model(model, half=False) is model  # no copy when nothing changes


@pytest.mark.parametrize("flag,value,match", [("--conf-thres", "1.5", "--conf-thres 1.5 .*between 0 and 1"),
                                              ("--iou-thres", "-0.1", "--iou-thres -0.1 .*between 0 and 1"),
                                              ("--batch-size", "0", "--batch-size 0 .*> 0")])
def test_bad_thresholds_and_batch_refused_before_loading(flag, value, match, tmp_path):
    # weights and data that do not exist: the flag check must come first
    args = ["--data", str(tmp_path / "no.yaml"), "--weights", str(tmp_path / "no.pt"), flag, value]
    with pytest.raises(ValueError, match=match):
        run_cli(args)


def test_coco_ground_truth_from_yolo_labels_scores_perfect_predictions():
    """GT built from normalised YOLO labels is in original pixels; the same boxes as predictions give AP 1."""
    pytest.importorskip("pycocotools")
    from utils.coco_eval import ground_truth_json, pycocotools_map
    import numpy as np
    labels = [np.array([[0, 0.5, 0.5, 0.5, 0.25], [1, 0.25, 0.75, 0.2, 0.2]], np.float32),
              np.array([[1, 0.6, 0.4, 0.3, 0.5]], np.float32), np.zeros((0, 5), np.float32)]
    files, shapes = ["a/000000000042.jpg", "b/img_x.jpg", "c/7.png"], [[200, 100], [640, 480], [50, 50]]
    gt = ground_truth_json(files, shapes, labels, {0: "a", 1: "b"}, list(range(1000)))
    first = gt["annotations"][0]
    assert first["image_id"] == 42 and first["bbox"] == pytest.approx([50, 37.5, 100, 25]) and first["area"] == 2500
    assert [im["width"] for im in gt["images"]] == [200, 640, 50] and len(gt["annotations"]) == 3
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
             for a in gt["annotations"]]
    preds.append({"image_id": 42, "category_id": 0, "bbox": [0, 0, 10, 10], "score": 0.1})  # a low false positive
    assert pycocotools_map(gt, preds) == pytest.approx((1.0, 1.0))  # mixed int/str ids handled too


@pytest.mark.skipif(not (COCO128.exists() and YOLOV5N.exists()), reason="../shared coco128 / yolov5n.pt absent")
def test_save_json_pycocotools_agrees_with_project_map_on_coco128(tmp_path):
    pytest.importorskip("pycocotools")
    from utils.coco_eval import pycocotools_map
    (_, _, map50, map_, *_), _, _ = val.run(str(COCO128), weights=str(YOLOV5N), batch_size=16, imgsz=320,
                                         device="cpu", workers=0, plots=False, project=tmp_path, save_json=True)
    run = tmp_path / "exp"
    gt = json.loads((run / "ground_truth.json").read_text())
    assert len(gt["images"]) == 128 and len(gt["annotations"]) == 929
    coco_map, coco_map50 = pycocotools_map(gt, json.loads(next(run.glob("*_predictions.json")).read_text()))
    assert abs(coco_map - map_) < 0.005, (coco_map, map_)
    assert abs(coco_map50 - map50) < 0.01, (coco_map50, map50)
