"""Box conversions, IoU variants and NMS (including the original YOLOv5 NMS output on real data)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from utils.boxes import (bbox_iou, box_iou, clip_boxes, non_max_suppression, scale_boxes, xywh2xyxy, xywhn2xyxy,
                         xyn2xy, xyxy2xywh, xyxy2xywhn)

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE_IO = SHARED / "weights" / "yolov5n_reference_io.pt"


def random_xyxy(n, seed=0, size=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    return torch.cat((xy, xy + wh), 1)


def test_conversions_hand_values_and_round_trip():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 100.0]])
    assert xyxy2xywh(xyxy).tolist() == [[30.0, 60.0, 40.0, 80.0]]
    assert xywh2xyxy(torch.tensor([[30.0, 60.0, 40.0, 80.0]])).tolist() == xyxy.tolist()
    assert xyxy2xywhn(xyxy, w=100, h=200)[0].tolist() == pytest.approx([0.3, 0.3, 0.4, 0.4])
    assert xywhn2xyxy(torch.tensor([[0.3, 0.3, 0.4, 0.4]]), w=100, h=200, padw=5, padh=1)[0].tolist() == \
        pytest.approx([15.0, 21.0, 55.0, 101.0])
    assert xyn2xy(np.array([[0.5, 0.25]]), w=100, h=40).tolist() == [[50.0, 10.0]]
    boxes = random_xyxy(20)
    assert torch.allclose(xywh2xyxy(xyxy2xywh(boxes)), boxes, atol=1e-5)
    arr = boxes.numpy()
    assert isinstance(xyxy2xywh(arr), np.ndarray) and np.allclose(xywh2xyxy(xyxy2xywh(arr)), arr, atol=1e-5)
    assert torch.equal(boxes, random_xyxy(20)), "conversions must not modify their input"


def test_xyxy2xywhn_clip_keeps_boxes_inside():
    out = xyxy2xywhn(torch.tensor([[-10.0, 0.0, 50.0, 120.0]]), w=100, h=100, clip=True)
    assert out[0].tolist() == pytest.approx([0.25, 0.5, 0.5, 1.0])


def test_clip_boxes_tensor_and_numpy():
    t = torch.tensor([[-5.0, -1.0, 700.0, 300.0]])
    clip_boxes(t, (200, 640))
    assert t.tolist() == [[0.0, 0.0, 640.0, 200.0]]
    a = np.array([[-5.0, -1.0, 700.0, 300.0]])
    clip_boxes(a, (200, 640))
    assert a.tolist() == [[0.0, 0.0, 640.0, 200.0]]


def test_scale_boxes_undoes_letterbox():
    # 640x480 (w x h) letterboxed into 320x320: gain 0.5, 40 px of padding above and below
    boxes = torch.tensor([[10.0, 50.0, 110.0, 150.0]])
    scale_boxes((320, 320), boxes, (480, 640))
    assert boxes[0].tolist() == pytest.approx([20.0, 20.0, 220.0, 220.0])
    boxes = torch.tensor([[10.0, 50.0, 110.0, 150.0]])
    scale_boxes((320, 320), boxes, (480, 640), ratio_pad=((0.5, 0.5), (0.0, 40.0)))
    assert boxes[0].tolist() == pytest.approx([20.0, 20.0, 220.0, 220.0])


def test_box_iou_hand_value():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([50 / 150, 0.0])


@pytest.mark.parametrize("flag,reference", [
    ({}, torchvision.ops.box_iou),
    ({"GIoU": True}, torchvision.ops.generalized_box_iou),
    ({"DIoU": True}, torchvision.ops.distance_box_iou),
    ({"CIoU": True}, torchvision.ops.complete_box_iou),
])
def test_bbox_iou_matches_torchvision_pairwise_diagonal(flag, reference):
    b1, b2 = random_xyxy(64, seed=1), random_xyxy(64, seed=2)
    b2[:8] = b1[:8] + 0.5  # some heavy overlaps, not only disjoint pairs
    expected = reference(b1, b2).diagonal()
    assert torch.allclose(bbox_iou(b1, b2, xywh=False, **flag).squeeze(-1), expected, atol=1e-4)
    assert torch.allclose(bbox_iou(xyxy2xywh(b1), xyxy2xywh(b2), **flag).squeeze(-1), expected, atol=1e-4)


def test_bbox_iou_ciou_gradient_is_finite_and_improves_overlap():
    target = torch.tensor([[50.0, 50.0, 20.0, 30.0]])
    pred = torch.tensor([[44.0, 57.0, 12.0, 40.0]], requires_grad=True)
    loss = (1 - bbox_iou(pred, target, CIoU=True)).sum()
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    with torch.no_grad():
        stepped = pred - 1.0 * pred.grad / pred.grad.norm()
    assert bbox_iou(stepped, target, CIoU=True).item() > bbox_iou(pred.detach(), target, CIoU=True).item()


def decoded(rows, nc=3):
    """Build a [1, n, 5 + nc] prediction from (xc, yc, w, h, obj, cls scores...) rows."""
    return torch.tensor([rows], dtype=torch.float32).view(1, len(rows), 5 + nc)


def test_nms_suppresses_within_class_only():
    pred = decoded([[50, 50, 20, 20, 0.9, 0.9, 0.1, 0.0],
                    [52, 50, 20, 20, 0.8, 0.9, 0.1, 0.0],  # same class, IoU ~0.8: suppressed
                    [51, 50, 20, 20, 0.9, 0.0, 0.9, 0.0]])  # other class: kept
    out = non_max_suppression(pred, 0.25, 0.45)[0]
    assert out.shape == (2, 6)
    assert out[:, 5].tolist() == [0.0, 1.0]
    assert out[0, :4].tolist() == pytest.approx([40, 40, 60, 60])
    assert out[0, 4].item() == pytest.approx(0.81)  # conf = obj * cls
    assert len(non_max_suppression(pred, 0.25, 0.45, agnostic=True)[0]) == 1
    assert non_max_suppression(pred, 0.25, 0.45, classes=[1])[0][:, 5].tolist() == [1.0]


def test_nms_conf_threshold_uses_obj_times_cls():
    pred = decoded([[50, 50, 20, 20, 0.5, 0.4, 0.0, 0.0]])  # 0.2 < 0.25 although obj 0.5 passes
    assert non_max_suppression(pred, 0.25, 0.45)[0].shape == (0, 6)
    assert non_max_suppression(pred, 0.1, 0.45)[0].shape == (1, 6)


def test_nms_multi_label_and_max_det():
    pred = decoded([[50, 50, 20, 20, 0.9, 0.8, 0.7, 0.1]])
    assert non_max_suppression(pred, 0.25, 0.45, multi_label=True)[0][:, 5].tolist() == [0.0, 1.0]
    assert non_max_suppression(pred, 0.25, 0.45, multi_label=False)[0][:, 5].tolist() == [0.0]
    many = torch.zeros(1, 50, 8)
    many[0, :, 0] = torch.arange(50) * 30.0 + 15  # 50 disjoint boxes
    many[0, :, 1:4] = torch.tensor([15.0, 20.0, 20.0])
    many[0, :, 4] = torch.linspace(0.5, 0.99, 50)
    many[0, :, 5] = 1.0
    out = non_max_suppression(many, 0.25, 0.45, max_det=7)[0]
    assert len(out) == 7 and torch.all(out[:-1, 4] >= out[1:, 4])


def test_nms_hybrid_labels_and_empty_batch():
    pred = torch.zeros(2, 10, 8)
    labels = [torch.tensor([[2.0, 30.0, 30.0, 10.0, 10.0]]), torch.zeros(0, 5)]
    out = non_max_suppression(pred, 0.25, 0.45, labels=labels)
    assert out[0].tolist() == [[25.0, 25.0, 35.0, 35.0, 1.0, 2.0]]
    assert out[1].shape == (0, 6)


def test_nms_accepts_eval_output_tuple_and_rejects_bad_input():
    pred = decoded([[50, 50, 20, 20, 0.9, 0.9, 0.1, 0.0]])
    assert len(non_max_suppression((pred, []), 0.25, 0.45)[0]) == 1
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(pred, 1.5, 0.45)
    with pytest.raises(ValueError, match="iou_thres"):
        non_max_suppression(pred, 0.25, -0.1)
    with pytest.raises(ValueError, match="5 \\+ nc"):
        non_max_suppression(torch.zeros(10, 8), 0.25, 0.45)


def test_nms_carries_mask_coefficients_scaled_by_objectness():
    # 2 classes, then 3 mask coefficients per row (a segmentation model's decoded output)
    pred = torch.tensor([[[50, 50, 20, 20, 0.9, 0.8, 0.1, 1.0, -2.0, 3.0],
                          [51, 50, 20, 20, 0.7, 0.9, 0.1, 5.0, 5.0, 5.0],  # same class, overlaps: suppressed
                          [10, 10, 8, 8, 0.6, 0.2, 0.9, -1.0, 0.5, 0.0],
                          [90, 90, 8, 8, 0.2, 0.9, 0.9, 7.0, 7.0, 7.0]]])  # obj below conf_thres
    out = non_max_suppression(pred, 0.25, 0.45, nm=3)[0]
    assert out.shape == (2, 9)
    assert torch.allclose(out[:, 4:6], torch.tensor([[0.72, 0.0], [0.54, 1.0]]))
    # v7.0 multiplies every column after objectness by it, the coefficients included
    assert torch.allclose(out[:, 6:], torch.tensor([[0.9, -1.8, 2.7], [-0.6, 0.3, 0.0]]))
    assert torch.equal(out[:, :6], non_max_suppression(pred[..., :7], 0.25, 0.45)[0])  # same boxes as without
    multi = non_max_suppression(pred, 0.1, 0.45, nm=3, multi_label=True)[0]
    assert multi.shape[1] == 9 and torch.allclose(multi[multi[:, 5] == 1][0, 6:], torch.tensor([-0.6, 0.3, 0.0]))
    assert non_max_suppression(pred, 0.99, 0.45, nm=3)[0].shape == (0, 9)
    with pytest.raises(ValueError, match="nm=6"):
        non_max_suppression(pred, 0.25, 0.45, nm=6)


@pytest.mark.skipif(not REFERENCE_IO.exists(), reason="reference assets in ../shared not available")
def test_nms_reproduces_original_yolov5_output():
    ref = torch.load(REFERENCE_IO, weights_only=True)
    out = non_max_suppression(ref["decoded"], conf_thres=0.25, iou_thres=0.45)
    expected = ref["nms_conf0.25_iou0.45"]
    assert len(out) == len(expected)
    for got, want in zip(out, expected):
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-4)


def flood(bs=2, n=3000, nc=20, seed=0):
    """An untrained model's output: many overlapping boxes, every class score above conf 0.001."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(bs, n, 5 + nc, generator=g)
    pred[..., :2] = pred[..., :2] * 200
    pred[..., 2:4] = pred[..., 2:4] * 60 + 5
    return pred


def reference_nms(x, conf_thres, iou_thres, max_det, max_nms):
    """Every candidate built and fully sorted before the cut (what the top-k must equal)."""
    nc = x.shape[1] - 5
    scores = x[:, 5:] * x[:, 4:5]
    i, j = (scores > conf_thres).nonzero().T
    cand = torch.cat((xywh2xyxy(x[i, :4]), scores[i, j, None], j[:, None].float()), 1)
    cand = cand[cand[:, 4].argsort(descending=True, stable=True)[:max_nms]]
    keep = torchvision.ops.batched_nms(cand[:, :4], cand[:, 4], cand[:, 5], iou_thres)[:max_det]
    return cand[keep], nc


@pytest.mark.parametrize("max_nms", [30000, 5000])
def test_nms_pre_top_k_equals_sorting_every_candidate(max_nms):
    pred = flood()
    out = non_max_suppression(pred, 0.001, 0.6, multi_label=True, max_det=300, max_nms=max_nms)
    for x, got in zip(pred, out):
        x = x[x[:, 4] > 0.001]
        want, _ = reference_nms(x, 0.001, 0.6, 300, max_nms)
        assert got.shape == want.shape and len(got) == 300
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))  # equal scores: any order
        assert torch.equal(got[:, 4], want[:, 4])


def test_nms_has_no_time_limit(monkeypatch):
    """Results never depend on machine load: a clock jumping 100 s per call changes nothing
    (YOLOv5's per-batch time limit left the later images of a slow batch without detections)."""
    import time
    import utils.boxes as boxes
    pred = flood(bs=4, n=500, nc=5)
    expected = non_max_suppression(pred, 0.001, 0.6, multi_label=True)
    clock = iter(range(0, 10 ** 6, 100))
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    got = boxes.non_max_suppression(pred, 0.001, 0.6, multi_label=True)
    assert all(len(g) > 0 and torch.equal(g, e) for g, e in zip(got, expected))
