"""A segmentation model in the detection tools: detect.py and evaluate() use its boxes (masks are theirs to add)."""

import cv2
import numpy as np
import torch

import detect
from models.checkpoint import model_checkpoint_fields, save_checkpoint
from models.yolo import Model


def _seg_model(nc):
    """Random yolov5n-seg with confident boxes (objectness ~1, classes ~0.5) and large mask coefficients:
    read as class scores, the coefficients would win."""
    torch.manual_seed(0)
    model = Model('yolov5n-seg.yaml', nc=nc)
    head = model.model[-1]
    with torch.no_grad():
        for conv in head.m:
            bias = conv.bias.view(head.na, head.no)
            bias[:, 4], bias[:, 5:5 + nc], bias[:, 5 + nc:] = 5.0, 0.0, 5.0
    return model


def test_detect_draws_the_boxes_of_a_segmentation_checkpoint(tmp_path):
    model = _seg_model(nc=3)
    model.names = ['cat', 'dog', 'bird']
    weights = save_checkpoint(tmp_path / 'seg.pt', model_checkpoint_fields(model))
    cv2.imwrite(str(tmp_path / 'a.jpg'), np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    save_dir = detect.run(weights=weights, source=str(tmp_path / 'a.jpg'), imgsz=64, conf_thres=0.0, max_det=20,
                          save_txt=True, project=tmp_path, name='exp')
    rows = [line.split() for line in (save_dir / 'labels' / 'a.txt').read_text().splitlines()]
    assert rows and all(len(r) == 5 and r[0] in ('0', '1', '2') for r in rows)


def test_evaluate_scores_the_boxes_of_a_segmentation_model(tiny_data, tmp_path):
    from utils.dataset_yaml import check_dataset
    from utils.evaluate import build_loader, evaluate
    loader = build_loader(check_dataset(str(tiny_data)), 'val', imgsz=64, batch_size=4, stride=32, workers=0)
    # the confusion matrix (plots) indexes by predicted class: a coefficient read as a class fails there
    result = evaluate(_seg_model(nc=8), loader, conf_thres=0.0, plots=True, save_dir=tmp_path)
    assert result.seen == 8
