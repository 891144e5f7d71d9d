"""YOLOv5 detection loss: target assignment by hand, limiting values, gradients, focal loss."""
import math

import pytest
import torch
import torch.nn as nn
import torchvision

from models.yolo import Detect, Model
from utils.loss import ComputeLoss, FocalLoss, smooth_bce

ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]  # P3-P5 pixels
STRIDES = [8.0, 16.0, 32.0]
HYP = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0, label_smoothing=0.0)


class HeadOnly(nn.Module):
    """The minimum ComputeLoss reads: `.model[-1]` is a Detect (anchors in stride units) and `.hyp`."""

    def __init__(self, nc=3, **hyp):
        super().__init__()
        det = Detect(nc=nc, anchors=ANCHORS, ch=(4, 4, 4))
        det.stride.copy_(torch.tensor(STRIDES))
        det.anchors /= det.stride.view(-1, 1, 1)
        self.model = nn.Sequential(det)
        self.hyp = {**HYP, **hyp}


def zero_preds(imgsz=64, bs=1, nc=3, requires_grad=False):
    return [torch.zeros(bs, 3, imgsz // int(s), imgsz // int(s), nc + 5, requires_grad=requires_grad)
            for s in STRIDES]


# one target, image 0, class 1, centre (0.30, 0.55), 20 x 26 px in a 64 x 64 input
TARGET = torch.tensor([[0.0, 1.0, 0.30, 0.55, 20 / 64, 26 / 64]])


def assigned(indices):
    b, a, gj, gi = indices
    return sorted(zip(a.tolist(), gj.tolist(), gi.tolist()))


def test_single_target_assignment_by_hand():
    loss = ComputeLoss(HeadOnly())
    tcls, tbox, indices, anch = loss.build_targets(zero_preds(), TARGET)
    # P3 (8x8 grid): centre (2.4, 4.4); all 3 anchors within ratio 4; fractions 0.4 < 0.5 add the
    # left (gx 1) and upper (gy 3) neighbours
    cells = [(4, 2), (4, 1), (3, 2)]
    assert assigned(indices[0]) == sorted((a, gj, gi) for a in range(3) for gj, gi in cells)
    own = (indices[0][2] == 4) & (indices[0][3] == 2)
    assert torch.allclose(tbox[0][own], torch.tensor([[0.4, 0.4, 2.5, 3.25]]).expand(3, 4), atol=1e-5)
    left = (indices[0][3] == 1)
    assert torch.allclose(tbox[0][left][:, :2], torch.tensor([[1.4, 0.4]]).expand(3, 2), atol=1e-5)
    # P4 (4x4): centre (1.2, 2.2), wh (1.25, 1.625); the tall anchor (3.69 x 7.44) exceeds ratio 4
    assert assigned(indices[1]) == sorted((a, gj, gi) for a in (0, 1) for gj, gi in [(2, 1), (2, 0), (1, 1)])
    # P5 (2x2): every anchor is more than 4x the target
    assert len(indices[2][0]) == 0
    assert all((c == 1).all() for c in tcls)
    assert torch.equal(anch[1], loss.anchors[1][indices[1][1]])


def test_neighbours_on_the_far_side():
    loss = ComputeLoss(HeadOnly())
    target = torch.tensor([[0.0, 0.0, 0.45, 0.45, 20 / 64, 26 / 64]])  # P3 centre (3.6, 3.6)
    _, _, indices, _ = loss.build_targets(zero_preds(), target)
    cells = {(gj, gi) for _, gj, gi in assigned(indices[0])}
    assert cells == {(3, 3), (3, 4), (4, 3)}  # own, right, lower


def test_anchor_t_controls_assignment():
    _, _, strict, _ = ComputeLoss(HeadOnly(anchor_t=1.3)).build_targets(zero_preds(), TARGET)
    _, _, loose, _ = ComputeLoss(HeadOnly(anchor_t=4.0)).build_targets(zero_preds(), TARGET)
    assert assigned(strict[0]) == [(1, 3, 2), (1, 4, 1), (1, 4, 2)]  # only anchor 1 is within 1.3x
    assert len(loose[0][0]) == 9


def test_empty_targets_hand_value():
    loss = ComputeLoss(HeadOnly())
    total, items = loss(zero_preds(bs=2), torch.zeros(0, 6))
    # zero logits against zero objectness: BCE = ln 2 on every level, weighted 4.0 + 1.0 + 0.4
    assert items[0].item() == 0 and items[2].item() == 0
    assert items[1].item() == pytest.approx(math.log(2) * 5.4 * HYP["obj"], rel=1e-5)
    assert total.item() == pytest.approx(items.sum().item() * 2, rel=1e-6)


def test_zero_logits_one_target_class_loss():
    loss = ComputeLoss(HeadOnly())
    _, items = loss(zero_preds(), TARGET)
    assert items[2].item() == pytest.approx(2 * math.log(2) * HYP["cls"], rel=1e-5)  # P3 and P4 assigned
    assert items[0].item() > 0


def perfect_preds(loss, targets, nc=3):
    """Logits whose decoded boxes equal the assigned targets and whose scores are certain."""
    preds = [p.fill_(-20.0) for p in zero_preds(nc=nc)]
    tcls, tbox, indices, anch = loss.build_targets(preds, targets)
    for p, c, t, (b, a, gj, gi), an in zip(preds, tcls, tbox, indices, anch):
        sxy = (t[:, :2] + 0.5) / 2  # invert xy = 2 * sigmoid - 0.5
        swh = (t[:, 2:] / an).sqrt() / 2  # invert wh = (2 * sigmoid)^2 * anchor
        p[b, a, gj, gi, 0:2] = torch.logit(sxy)
        p[b, a, gj, gi, 2:4] = torch.logit(swh)
        p[b, a, gj, gi, 4] = 20.0
        p[b, a, gj, gi, 5 + c] = 20.0
    return preds


def test_perfect_predictions_give_near_zero_loss():
    loss = ComputeLoss(HeadOnly())
    good = perfect_preds(loss, TARGET)
    _, items = loss(good, TARGET)
    assert items.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-5)
    noisy = [p + torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) for p in good]
    _, worse = loss(noisy, TARGET)
    assert worse[:2].min() > 1e-2 and worse.sum() > 1000 * items.sum()


def test_label_smoothing_targets_are_cp_cn():
    cp, cn = smooth_bce(0.1)
    assert (cp, cn) == pytest.approx((0.95, 0.05))
    loss = ComputeLoss(HeadOnly(label_smoothing=0.1))
    preds = [p.detach().requires_grad_(True) for p in perfect_preds(loss, TARGET)]
    _, _, indices, _ = loss.build_targets(preds, TARGET)
    for p, (b, a, gj, gi) in zip(preds, indices):  # class logits at exactly the smoothed targets
        with torch.no_grad():
            p[b, a, gj, gi, 5:] = math.log(cn / (1 - cn))
            p[b, a, gj, gi, 6] = math.log(cp / (1 - cp))
    total, _ = loss(preds, TARGET)
    total.backward()
    for p, (b, a, gj, gi) in zip(preds, indices):
        if len(b):
            assert p.grad[b, a, gj, gi, 5:].abs().max().item() < 1e-6  # BCE minimum: sigmoid(logit) == target


def test_single_class_has_no_class_loss():
    loss = ComputeLoss(HeadOnly(nc=1))
    target = TARGET.clone()
    target[:, 1] = 0
    _, items = loss(zero_preds(nc=1), target)
    assert items[2].item() == 0 and items[0].item() > 0


def test_focal_loss_matches_torchvision_sigmoid_focal_loss():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(200, generator=g), (torch.rand(200, generator=g) > 0.7).float()
    ours = FocalLoss(nn.BCEWithLogitsLoss(), gamma=1.5, alpha=0.25)(logits, targets)
    ref = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=1.5, reduction="mean")
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_fl_gamma_switches_to_focal_loss():
    loss = ComputeLoss(HeadOnly(fl_gamma=1.5))
    assert isinstance(loss.bce_obj, FocalLoss) and isinstance(loss.bce_cls, FocalLoss)
    _, plain = ComputeLoss(HeadOnly())(zero_preds(), TARGET)
    _, focal = loss(zero_preds(), TARGET)
    assert focal[1] < plain[1]  # focal down-weights the many easy negatives


def test_missing_hyp_is_a_clear_error():
    model = HeadOnly()
    del model.hyp["anchor_t"]
    with pytest.raises(KeyError, match="anchor_t"):
        ComputeLoss(model)
    model.hyp = None
    with pytest.raises(ValueError, match="model.hyp"):
        ComputeLoss(model)


def test_gradient_flows_through_a_real_model():
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=3).train()
    model.hyp = dict(HYP)
    loss = ComputeLoss(model)
    targets = torch.tensor([[0, 1, 0.30, 0.55, 0.3, 0.4], [1, 2, 0.7, 0.2, 0.2, 0.1]])
    total, items = loss(model(torch.rand(2, 3, 64, 64)), targets)
    assert torch.isfinite(total) and total.item() == pytest.approx(items.sum().item() * 2, rel=1e-5)
    total.backward()
    assert model.model[0].conv.weight.grad.abs().sum() > 0
    assert all(m.weight.grad.abs().sum() > 0 for m in model.model[-1].m)
