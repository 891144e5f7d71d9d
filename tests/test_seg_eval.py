"""Segmentation evaluation: mask matching, evaluate() / val.py on -seg models, the trainer's seg validation."""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
import val
from conftest import tiny_train_args
from models.checkpoint import model_checkpoint_fields, save_checkpoint
from models.yolo import Model
from utils.metrics import IOU_THRESHOLDS
from utils.seg_eval import image_gt_masks, match_masks
from utils.tasks import SEGMENT_METRIC_KEYS

HYP = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0, label_smoothing=0.0)


def _square(size, x1, y1, x2, y2):
    m = torch.zeros(size, size)
    m[y1:y2, x1:x2] = 1
    return m


def test_overlap_and_per_instance_gt_masks_are_the_same_instances():
    a, b = _square(16, 0, 0, 8, 8), _square(16, 4, 4, 12, 12)
    index_map = a.clone()
    index_map[b > 0] = 2  # the second instance drawn on top, as the loader does
    targets = torch.tensor([[0, 0, .5, .5, .1, .1], [0, 1, .5, .5, .1, .1], [1, 2, .5, .5, .1, .1]])
    overlap = image_gt_masks(torch.stack((index_map, torch.zeros(16, 16))), targets, 0, 2, overlap=True)
    assert torch.equal(overlap[1], b) and torch.equal(overlap[0], a * (b == 0))
    per_instance = image_gt_masks(torch.stack((a, b, b)), targets, 0, 2, overlap=False)
    assert torch.equal(per_instance, torch.stack((a, b)))


def test_mask_matching_thresholds_classes_and_resolution():
    gt = torch.stack((_square(16, 0, 0, 8, 8), _square(16, 8, 8, 16, 16)))
    # prediction 0: the first mask exactly; 1: 6 of the second's 8 columns (IoU 0.75); 2: a wrong class
    pred = torch.stack((_square(16, 0, 0, 8, 8), _square(16, 10, 8, 16, 16), _square(16, 8, 8, 16, 16))).bool()
    correct = match_masks(pred, gt, torch.tensor([0., 1.]), torch.tensor([0., 1., 2.]), IOU_THRESHOLDS)
    assert correct[0].all() and not correct[2].any()
    assert correct[1].tolist() == [t <= 0.75 for t in IOU_THRESHOLDS.tolist()]
    # ground truth at 4x the resolution is resized to the predictions' before matching
    fine = torch.nn.functional.interpolate(gt[None], scale_factor=4, mode="nearest")[0]
    assert torch.equal(match_masks(pred, fine, torch.tensor([0., 1.]), torch.tensor([0., 1., 2.]), IOU_THRESHOLDS),
                       correct)


def _seg_model():
    torch.manual_seed(0)
    model = Model("yolov5n-seg.yaml", nc=8)
    model.names = [f"c{i}" for i in range(8)]
    model.hyp = dict(HYP)
    return model


@pytest.mark.parametrize("overlap,ratio", [(True, 4), (False, 1)])
def test_evaluate_scores_boxes_and_masks_with_the_seg_loss(tiny_seg_data, overlap, ratio):
    from utils.dataset_yaml import check_dataset
    from utils.evaluate import build_loader, evaluate
    from utils.seg_loss import ComputeSegLoss
    data = check_dataset(str(tiny_seg_data))
    model = _seg_model()
    loader = build_loader(data, "val", imgsz=64, batch_size=4, stride=32, workers=0, masks=True, overlap=overlap,
                          downsample_ratio=ratio)
    res = evaluate(model, loader, conf_thres=0.0, compute_loss=ComputeSegLoss(model, overlap=overlap))
    values = res.as_tuple()
    assert len(values) == len(SEGMENT_METRIC_KEYS) == 12 and res.mask is not None
    assert all(v > 0 for v in values[8:])  # box, seg, obj, cls validation losses
    assert res.fitness == pytest.approx(0.1 * values[2] + 0.9 * values[3] + 0.1 * values[6] + 0.9 * values[7])
    assert res.maps.shape == (8,)
    box_only = evaluate(model, build_loader(data, "val", imgsz=64, batch_size=4, stride=32, workers=0), conf_thres=0.0)
    assert len(box_only.as_tuple()) == 7 and box_only.mask is None
    assert box_only.box.means() == res.box.means()  # the masks do not change the boxes' figures


def test_val_on_a_seg_checkpoint_prints_v7_table_and_writes_rle_masks(tiny_seg_data, tmp_path, capsys):
    pytest.importorskip("pycocotools")
    weights = save_checkpoint(tmp_path / "seg.pt", model_checkpoint_fields(_seg_model()))
    results, maps, _ = val.main(val.parse_opt(["--data", str(tiny_seg_data), "--weights", str(weights), "--imgsz",
                                               "64", "--device", "cpu", "--workers", "0", "--project",
                                               str(tmp_path), "--save-json", "--conf-thres", "0.0"]))
    out, err = capsys.readouterr()
    assert "Box(P" in err and "Mask(P" in err and "mAP50-95)" in err  # the table header is the progress bar's
    assert len(results) == 12 and maps.shape == (8,)
    preds = json.loads(next((tmp_path / "exp").glob("*_predictions.json")).read_text())
    assert preds and set(preds[0]) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert set(preds[0]["segmentation"]) == {"size", "counts"} and isinstance(preds[0]["segmentation"]["counts"], str)
    gt = json.loads((tmp_path / "exp" / "ground_truth.json").read_text())
    assert all(len(a["segmentation"][0]) >= 6 and a["area"] > 0 for a in gt["annotations"])
    assert "segm mAP@0.5:0.95" in out  # pycocotools' masks beside the project's
    assert all((tmp_path / "exp" / f"val_batch0_{kind}.jpg").exists() for kind in ("labels", "pred"))


def test_trainer_validates_seg_models_and_logs_v7_columns(tiny_seg_data, tmp_path):
    args = tiny_train_args(tiny_seg_data, tmp_path, "seg", epochs=1)
    args[args.index("yolov5n.yaml")] = "yolov5n-seg.yaml"
    results = train.main(train.parse_opt(args))
    assert len(results) == 12
    with open(tmp_path / "seg" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0])
    assert all(k in columns for k in SEGMENT_METRIC_KEYS) and "train/seg_loss" in columns
    assert [float(rows[0][k]) for k in SEGMENT_METRIC_KEYS] == pytest.approx(list(results), abs=1e-3)
    assert all(float(rows[0][k]) > 0 for k in SEGMENT_METRIC_KEYS[8:])  # validation losses were computed
    ckpt = torch.load(tmp_path / "seg" / "weights" / "best.pt", weights_only=True)
    assert ckpt["best_fitness"] == pytest.approx(
        float(np.dot([0.1, 0.9, 0.1, 0.9], [results[2], results[3], results[6], results[7]])), abs=1e-3)


class _OracleSeg(torch.nn.Module):
    """Stands in for a -seg model on a known loader: per image, one detection per label, its box jittered, its
    mask coefficient one-hot on a prototype that holds the label's mask at 1/4 resolution, some classes wrong;
    then a tail of low-confidence clutter whose masks fill their boxes, as a detector gives at conf 0.001
    (without it YOLOv5's AP closes the PR curve above COCO's: tests/test_metrics.py). A spread of box and
    mask IoUs without training a model."""
    task = "segment"
    clutter = 90  # with the up to 8 real ones, within COCO's 100 detections per image

    def __init__(self, loader, nc, seed=0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.model = [type("Head", (), {"nc": nc, "nm": 32})()]
        gen = torch.Generator().manual_seed(seed)
        self.calls = iter([self._output(im, targets, masks, nc, gen) for im, targets, _, _, masks in loader])

    @classmethod
    def _output(cls, im, targets, masks, nc, gen):
        b, _, h, w = im.shape
        counts = torch.bincount(targets[:, 0].long(), minlength=b)
        size = torch.tensor([w, h, w, h])
        pred = torch.zeros(b, int(counts.max()) + cls.clutter, 5 + nc + 32)
        pred[:, -cls.clutter:, :4] = torch.rand(b, cls.clutter, 4, generator=gen) * size * 0.5 + size * 0.25
        pred[:, -cls.clutter:, 4] = 1.0
        noise = torch.randint(0, nc, (b, cls.clutter), generator=gen)
        pred[:, -cls.clutter:].scatter_(2, 5 + noise[..., None], 0.001 + 0.1 * torch.rand(b, cls.clutter, 1, generator=gen))
        pred[:, -cls.clutter:, -1] = 1.0  # the last prototype is all foreground: the mask is the box
        protos = torch.full((b, 32, h // 4, w // 4), -10.0)
        protos[:, -1] = 10.0
        small = torch.nn.functional.avg_pool2d(masks[None].float(), 4)[0]  # the labels' masks at 1/4
        for row, (t, m) in enumerate(zip(targets, small)):
            i, k = int(t[0]), int((targets[:row, 0] == t[0]).sum())
            box = t[2:6] * size
            box = box + box[[2, 3, 2, 3]] * 0.08 * torch.randn(4, generator=gen)  # centre and size off by ~8%
            c = int(t[1]) if torch.rand(1, generator=gen) > 0.15 else (int(t[1]) + 1) % nc
            pred[i, k, :4], pred[i, k, 4], pred[i, k, 5 + c] = box, 1.0, 0.3 + 0.7 * torch.rand(1, generator=gen)
            pred[i, k, 5 + nc + k] = 1.0
            protos[i, k] = (m * 2 - 1) * 10
        return pred, (None, protos)

    def forward(self, im):
        return next(self.calls)


def _rle_ground_truth(loader, names):
    """COCO ground truth whose masks are the loader's own (rasterised by cv2 as v7.0 does), as RLE on the
    original images: pycocotools then scores exactly the masks the project scores, so the two mAPs can
    only differ by their matching and AP rules. (Against the label polygons, which pycocotools rasterises
    its own way, the masks differ by up to a pixel along the outline.)"""
    from utils.coco_eval import ground_truth_json, rle
    from utils.masks import scale_masks
    ds = loader.dataset
    gt = ground_truth_json(ds.im_files, ds.shapes, ds.labels, names, list(range(1000)))
    by_file = {}
    for im, targets, paths, shapes, masks in loader:
        for si, path in enumerate(paths):
            m = scale_masks(im.shape[2:], masks[targets[:, 0] == si], shapes[si][0], shapes[si][1])
            by_file[str(path)] = rle(m.to(torch.uint8).numpy())
    anns = iter(gt["annotations"])
    for f, lb in zip(ds.im_files, ds.labels):
        for r in by_file[str(f)][:len(lb)]:
            ann = next(anns)
            ann["segmentation"], ann["area"] = r, float(mask_area(r))
    return gt


def mask_area(r):
    from pycocotools.mask import area
    return area(dict(r, counts=r["counts"].encode()))


def test_mask_map_agrees_with_pycocotools_segm(tmp_path):
    pytest.importorskip("pycocotools")
    import yaml
    from utils.coco_eval import pycocotools_map
    from utils.dataset_yaml import check_dataset
    from utils.evaluate import build_loader, evaluate
    from utils.synthetic import CLASS_NAMES
    cfg = {"path": str(tmp_path / "data"), "train": "images/train", "val": "images/val", "names": list(CLASS_NAMES),
           "synthetic": {"n_train": 1, "n_val": 96, "imgsz": 160, "seed": 1, "max_objects": 8, "polygons": True}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    data = check_dataset(str(tmp_path / "d.yaml"))
    loader = build_loader(data, "val", imgsz=160, batch_size=32, stride=32, workers=0, masks=True, overlap=False,
                          downsample_ratio=1)
    res = evaluate(_OracleSeg(loader, nc=8), loader, save_json=True, save_dir=tmp_path, nc=8)
    gt = _rle_ground_truth(loader, res.names)
    segm, bbox = (pycocotools_map(gt, res.jdict, iou_type=t) for t in ("segm", "bbox"))
    assert 0.2 < res.mask.map < 0.9 and res.mask.map50 > res.mask.map  # a spread of mask IoUs, not all or nothing
    assert abs(segm[0] - res.mask.map) < 0.005 and abs(segm[1] - res.mask.map50) < 0.01, (segm, res.mask.means())
    assert abs(bbox[0] - res.box.map) < 0.005, (bbox, res.box.means())


@pytest.mark.slow
def test_val_reproduces_v7_segment_val(tmp_path):
    """val.py against v7.0's own segment/val.py (peer subprocess, benchmarks/seg_val_vs_v7.py) on coco-seg at
    320 with the v7.0 checkpoint: its mask rows are random (mask mAP ~0), so this pins the boxes and the mask
    plumbing; `python benchmarks/seg_val_vs_v7.py --weights <a trained -seg .pt>` compares learned masks."""
    import os
    import peer_v7
    from conftest import ROOT
    weights = ROOT.parent / "shared" / "weights" / "yolov5n-seg_v7.0.pt"
    data = ROOT.parent / "shared" / "datasets" / "coco-seg" / "coco-seg.yaml"
    pydeps = os.environ.get("PEER_PYDEPS", "")
    if not (peer_v7.AVAILABLE and weights.exists() and data.exists()):
        pytest.skip("../shared (peers, yolov5n-seg_v7.0.pt, coco-seg) absent")
    if not (pydeps and (Path(pydeps) / "psutil").is_dir()):
        pytest.skip("v7.0's val needs psutil: PEER_PYDEPS=<pip install --no-deps --target DIR psutil seaborn thop>")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from seg_val_vs_v7 import compare
    ours, v7 = compare(weights, data, imgsz=320, batch=32, folder=tmp_path)
    for i in (2, 3, 6, 7):  # box and mask mAP50, mAP50-95
        assert abs(ours[i] - v7[i]) < 0.01, (i, ours, v7)


def test_a_seg_model_without_data_trains_on_the_synthetic_polygons(tmp_path, capsys):
    """`python train.py --cfg yolov5n-seg.yaml` needs no --data: the embedded set's polygon twin (offline)."""
    import train
    opt = train.prepare_run(train.parse_opt(["--cfg", "yolov5n-seg.yaml", "--project", str(tmp_path)]))
    assert Path(opt.data).name == "synthetic-seg.yaml" and "synthetic-seg.yaml" in capsys.readouterr().out
    opt = train.prepare_run(train.parse_opt(["--cfg", "yolov5n.yaml", "--project", str(tmp_path)]))
    assert Path(opt.data).name == "synthetic.yaml"
