"""YOLOv5 v7.0 segmentation loss (utils/seg_loss.py): v7.0's own numbers, mask layouts, labelled images."""
import pytest
import torch
import torch.nn as nn

import peer_v7
from models.yolo import Model, Segment
from utils.loss import ComputeLoss
from utils.seg_loss import ComputeSegLoss

ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
STRIDES = [8.0, 16.0, 32.0]
HYP = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0, label_smoothing=0.0)
NC, NM, IMGSZ = 4, 8, 64


class SegHeadOnly(nn.Module):
    """The minimum the loss reads: `.model[-1]` a Segment (anchors in stride units) and `.hyp`."""

    def __init__(self, nc=NC, nm=NM, **hyp):
        super().__init__()
        head = Segment(nc=nc, anchors=ANCHORS, nm=nm, npr=8, ch=(4, 4, 4))
        head.stride.copy_(torch.tensor(STRIDES))
        head.anchors /= head.stride.view(-1, 1, 1)
        self.model = nn.Sequential(head)
        self.hyp = {**HYP, **hyp}


def fixed_batch(seed=0, bs=3):
    """Random raw outputs, image-sorted targets (image 1 has none) and their masks in both layouts
    (overlap maps at twice the prototype size, per-row masks at the prototype size)."""
    g = torch.Generator().manual_seed(seed)
    no = 5 + NC + NM
    levels = [torch.randn(bs, 3, IMGSZ // int(s), IMGSZ // int(s), no, generator=g) for s in STRIDES]
    proto = torch.randn(bs, NM, IMGSZ // 4, IMGSZ // 4, generator=g)
    rows = [[0, 1, 0.30, 0.55, 0.40, 0.50], [0, 3, 0.70, 0.30, 0.25, 0.20], [0, 0, 0.5, 0.5, 0.9, 0.9],
            [2, 2, 0.40, 0.40, 0.30, 0.60], [2, 1, 0.75, 0.75, 0.12, 0.15]]
    targets = torch.tensor(rows)
    per_row, overlap = torch.zeros(len(rows), 16, 16), torch.zeros(bs, 32, 32)
    within = {}
    for k, (img, _, xc, yc, w, h) in enumerate(rows):
        within[img] = within.get(img, 0) + 1
        x1, y1, x2, y2 = (int(v * 32) for v in (xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2))
        ellipse = torch.rand(y2 - y1, x2 - x1, generator=g) > 0.3  # a ragged blob inside the box
        region = overlap[int(img), y1:y2, x1:x2]
        region[ellipse] = within[img]  # later rows on top
    for k, (img, *_) in enumerate(rows):  # the per-row masks: what stays visible of each instance
        idx = sum(1 for r in rows[:k + 1] if r[0] == img)
        per_row[k] = nn.functional.interpolate((overlap[int(img)] == idx).float()[None, None], (16, 16),
                                               mode="nearest")[0, 0]
    return levels, proto, targets, overlap, per_row


V7_SNIPPET = r'''
import sys
import torch
import torch.nn as nn
from utils.segment.loss import ComputeLoss

d = torch.load(sys.argv[1])


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.nl, self.na, self.nc, self.nm = 3, 3, d["nc"], d["nm"]
        self.register_buffer("anchors", d["anchors"])
        self.stride = d["stride"]


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.ModuleList([Head()])
        self.w = nn.Parameter(torch.zeros(1))
        self.hyp = d["hyp"]


out = {}
for overlap, masks in ((True, d["overlap"]), (False, d["per_row"])):
    levels = [p.clone().requires_grad_() for p in d["levels"]]
    proto = d["proto"].clone().requires_grad_()
    loss, items = ComputeLoss(M(), overlap=overlap)((levels, proto), d["targets"].clone(), masks.clone())
    loss.backward()
    out[overlap] = dict(loss=loss.detach(), items=items, grads=[p.grad for p in levels], proto_grad=proto.grad)
torch.save(out, sys.argv[2])
'''


@pytest.fixture(scope="module")
def v7_root(tmp_path_factory):
    if not peer_v7.AVAILABLE:
        pytest.skip("../shared/peers (YOLOv5 v7.0 archive and shims) absent")
    return peer_v7.extract(tmp_path_factory.mktemp("peers"))


def test_equals_yolov5_v7_segmentation_loss(v7_root, tmp_path):
    model = SegHeadOnly()
    levels, proto, targets, overlap, per_row = fixed_batch()
    head = model.model[-1]
    torch.save(dict(levels=levels, proto=proto, targets=targets, overlap=overlap, per_row=per_row,
                    anchors=head.anchors.clone(), stride=head.stride.clone(), hyp=model.hyp, nc=NC, nm=NM),
               tmp_path / "in.pt")
    peer_v7.run(v7_root, V7_SNIPPET, tmp_path / "in.pt", tmp_path / "out.pt")
    ref = torch.load(tmp_path / "out.pt", weights_only=True)
    for overlap_flag, masks in ((True, overlap), (False, per_row)):
        lv = [p.clone().requires_grad_() for p in levels]
        pr = proto.clone().requires_grad_()
        loss, items = ComputeSegLoss(model, overlap=overlap_flag)((lv, pr), targets, masks)
        loss.backward()
        want = ref[overlap_flag]
        assert items[1] > 0.01  # the mask term is really there
        torch.testing.assert_close(items, want["items"], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(loss.detach(), want["loss"], rtol=1e-6, atol=1e-7)
        for ours, theirs in zip([p.grad for p in lv] + [pr.grad], want["grads"] + [want["proto_grad"]]):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-8)


def test_overlap_maps_and_per_row_masks_give_the_same_loss():
    levels, proto, targets, overlap, per_row = fixed_batch(seed=1)
    model = SegHeadOnly()
    a = ComputeSegLoss(model, overlap=True)((levels, proto), targets, overlap)
    b = ComputeSegLoss(model, overlap=False)((levels, proto), targets, per_row)
    torch.testing.assert_close(a[1], b[1])


def test_detection_terms_are_compute_loss_on_the_same_levels():
    levels, proto, targets, overlap, _ = fixed_batch(seed=2)
    model = SegHeadOnly()
    _, seg_items = ComputeSegLoss(model)((levels, proto), targets, overlap)
    _, det_items = ComputeLoss(model)(levels, targets)
    torch.testing.assert_close(seg_items[[0, 2, 3]], det_items, rtol=0, atol=0)


def _mask_term_by_hand(loss, levels, proto, targets, per_row):
    """Per positive, with explicit pixel loops: BCE summed inside the box / (mask pixels x box area),
    averaged per image, summed over images and levels, times box gain / B."""
    *_, indices, _, rows = loss.build_targets(levels, targets, rows=True)
    nb, nm, mh, mw = proto.shape
    total = 0.0
    for pi, (b, a, gj, gi), r in zip(levels, indices, rows):
        per_image = {}
        for k in range(b.shape[0]):
            coeffs = pi[b[k], a[k], gj[k], gi[k], 5 + NC:]
            xc, yc, w, h = targets[r[k], 2:6].tolist()
            x1, x2, y1, y2 = (xc - w / 2) * mw, (xc + w / 2) * mw, (yc - h / 2) * mh, (yc + h / 2) * mh
            s = 0.0
            for row in range(mh):
                for col in range(mw):
                    if x1 <= col < x2 and y1 <= row < y2:
                        z = float((coeffs * proto[b[k], :, row, col]).sum())
                        y = float(per_row[r[k], row, col])
                        s += max(z, 0) - z * y + torch.log1p(torch.exp(torch.tensor(-abs(z)))).item()
            per_image.setdefault(int(b[k]), []).append(s / (mh * mw) / (w * h))
        total += sum(sum(v) / len(v) for v in per_image.values())
    return total * HYP["box"] / nb


def test_mask_term_by_hand():
    levels, proto, targets, _, per_row = fixed_batch(seed=3)
    targets, per_row = targets[:2].clone(), per_row[:2]  # image 0 only: few positives for the pixel loops
    targets[:, 2:4] += 0.013  # box edges off the pixel grid: float32 and float64 bounds pick the same pixels
    loss = ComputeSegLoss(SegHeadOnly(), overlap=False)
    _, items = loss((levels, proto), targets, per_row)
    assert items[1].item() == pytest.approx(_mask_term_by_hand(loss, levels, proto, targets, per_row), rel=1e-4)


def test_unlabeled_images_contribute_nothing():
    levels, proto, targets, overlap, _ = fixed_batch(seed=4)
    levels = [p.requires_grad_() for p in levels]
    proto.requires_grad_()
    labelled = torch.tensor([True, False, True])  # image 1 has no rows
    loss_fn = ComputeSegLoss(SegHeadOnly())
    loss, items = loss_fn((levels, proto), targets, overlap, labelled)
    sub_targets = targets.clone()
    sub_targets[:, 0][sub_targets[:, 0] == 2] = 1
    sub_loss, sub_items = loss_fn(([p[labelled] for p in levels], proto[labelled]), sub_targets, overlap[labelled])
    torch.testing.assert_close(items, sub_items, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss, sub_loss, rtol=1e-6, atol=1e-7)
    loss.backward()
    assert all(p.grad[1].abs().sum() == 0 for p in levels) and proto.grad[1].abs().sum() == 0
    none, none_items = loss_fn((levels, proto), targets, overlap, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0 and none_items.tolist() == [0, 0, 0, 0] and none.requires_grad


def test_no_targets_give_no_mask_term_and_perfect_masks_a_small_one():
    levels, proto, targets, overlap, _ = fixed_batch(seed=5)
    loss_fn = ComputeSegLoss(SegHeadOnly())
    _, items = loss_fn((levels, proto), targets[:0], overlap * 0)
    assert items[1] == 0 and items[2] > 0  # objectness still learns "nothing here"
    # prototypes = +/-20 where the instance is / is not, coefficient 1 on channel 0 only: near-zero BCE
    one = targets[:1]
    truth = (overlap[:1] == 1).float()
    sharp = torch.zeros_like(proto[:1])
    sharp[:, 0] = nn.functional.interpolate(truth[None], (16, 16), mode="nearest")[0] * 40 - 20
    coeffs = torch.zeros(NM)
    coeffs[0] = 1
    for p in levels:
        p[..., 5 + NC:] = coeffs
    _, good = loss_fn(([p[:1] for p in levels], sharp), one, overlap[:1])
    _, bad = loss_fn(([p[:1] for p in levels], -sharp), one, overlap[:1])
    assert good[1] < 1e-6 < 1.0 < bad[1]


def test_gradient_reaches_prototypes_and_mask_coefficients_of_a_real_model():
    torch.manual_seed(0)
    model = Model("yolov5n-seg.yaml", nc=3).train()
    model.hyp = dict(HYP)
    targets = torch.tensor([[0, 1, 0.30, 0.55, 0.3, 0.4], [1, 2, 0.7, 0.2, 0.2, 0.1]])
    masks = torch.zeros(2, 16, 16)
    masks[0, 6:12, 3:8], masks[1, 2:4, 12:14] = 1, 1
    total, items = ComputeSegLoss(model)(model(torch.rand(2, 3, 64, 64)), targets, masks)
    assert total.item() == pytest.approx(items.sum().item() * 2, rel=1e-5) and items[1] > 0
    total.backward()
    head = model.model[-1]
    assert head.proto.cv3.conv.weight.grad.abs().sum() > 0
    coeff_rows = head.m[0].weight.grad.view(head.na, head.no, -1)[:, 5 + head.nc:]
    assert coeff_rows.abs().sum() > 0


def test_refuses_a_detection_model():
    model = Model("yolov5n.yaml", nc=3)
    model.hyp = dict(HYP)
    with pytest.raises(ValueError, match="segmentation model"):
        ComputeSegLoss(model)
