"""Box formats, IoU and non-maximum suppression (YOLOv5 semantics on top of torchvision.ops)."""
import math

import numpy as np
import torch
import torchvision

MAX_NMS = 30000  # most candidates passed into torchvision NMS per image


def _clone(x):
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x):
    """[x1, y1, x2, y2] -> [xc, yc, w, h] (any leading shape, last dim 4)."""
    if isinstance(x, torch.Tensor):
        return torchvision.ops.box_convert(x, 'xyxy', 'cxcywh')
    y = np.copy(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywh2xyxy(x):
    """[xc, yc, w, h] -> [x1, y1, x2, y2] (any leading shape, last dim 4)."""
    if isinstance(x, torch.Tensor):
        return torchvision.ops.box_convert(x, 'cxcywh', 'xyxy')
    y = np.copy(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xywhn2xyxy(x, w=640, h=640, padw=0, padh=0):
    """Normalised [xc, yc, w, h] -> pixel [x1, y1, x2, y2] in a w x h image shifted by the padding."""
    y = _clone(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x, w=640, h=640, clip=False, eps=0.0):
    """Pixel [x1, y1, x2, y2] -> normalised [xc, yc, w, h]; `clip` first clips to the image (less eps)."""
    if clip:
        x = _clone(x)
        clip_boxes(x, (h - eps, w - eps))
    y = _clone(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def xyn2xy(x, w=640, h=640, padw=0, padh=0):
    """Normalised points [x, y] (segments) -> pixels."""
    y = _clone(x)
    y[..., 0] = w * x[..., 0] + padw
    y[..., 1] = h * x[..., 1] + padh
    return y


def clip_boxes(boxes, shape):
    """Clip xyxy boxes in place to an image of shape (h, w)."""
    h, w = shape[:2]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def letterbox_geometry(img1_shape, img0_shape, ratio_pad=None):
    """(gain, (pad_w, pad_h)) of the letterbox that made img1 (h, w) from the original img0 (h, w).

    `ratio_pad` = ((ratio_h, ratio_w), (pad_w, pad_h)) as the loader records it; without it the
    letterbox is recomputed from the two shapes (centred padding).
    """
    if ratio_pad is not None:
        return ratio_pad[0][0], ratio_pad[1]
    gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
    return gain, ((img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2)


def scale_boxes(img1_shape, boxes, img0_shape, ratio_pad=None):
    """Map xyxy boxes (in place) from the letterboxed img1 (h, w) back to the original img0 (h, w)
    (`ratio_pad`: see letterbox_geometry)."""
    gain, pad = letterbox_geometry(img1_shape, img0_shape, ratio_pad)
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., :4] /= gain
    return clip_boxes(boxes, img0_shape)


def box_iou(box1, box2):
    """Pairwise IoU of xyxy boxes: [N, 4] x [M, 4] -> [N, M]."""
    return torchvision.ops.box_iou(box1, box2)


def _corners(box, xywh):
    if xywh:
        x, y, w, h = box.unbind(-1)
        return x - w / 2, y - h / 2, x + w / 2, y + h / 2
    return box.unbind(-1)


def bbox_iou(box1, box2, xywh=True, GIoU=False, DIoU=False, CIoU=False, eps=1e-7):
    """Elementwise IoU (or GIoU/DIoU/CIoU) of matching rows: [..., 4] and [..., 4] -> [..., 1].

    Unlike torchvision's pairwise functions this compares row i with row i, which is what the loss
    needs, and keeps CIoU's alpha out of the graph as the CIoU paper (and YOLOv5) do.
    """
    b1x1, b1y1, b1x2, b1y2 = _corners(box1, xywh)
    b2x1, b2y1, b2x2, b2y2 = _corners(box2, xywh)
    w1, h1 = b1x2 - b1x1, (b1y2 - b1y1).clamp(eps)
    w2, h2 = b2x2 - b2x1, (b2y2 - b2y1).clamp(eps)
    inter = (torch.minimum(b1x2, b2x2) - torch.maximum(b1x1, b2x1)).clamp(0) * \
            (torch.minimum(b1y2, b2y2) - torch.maximum(b1y1, b2y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if GIoU or DIoU or CIoU:
        cw = torch.maximum(b1x2, b2x2) - torch.minimum(b1x1, b2x1)  # enclosing box
        ch = torch.maximum(b1y2, b2y2) - torch.minimum(b1y1, b2y1)
        if DIoU or CIoU:
            c2 = cw ** 2 + ch ** 2 + eps  # enclosing diagonal squared
            rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
            if CIoU:
                v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
                with torch.no_grad():
                    alpha = v / (v - iou + (1 + eps))
                iou = iou - (rho2 / c2 + v * alpha)
            else:
                iou = iou - rho2 / c2
        else:
            c_area = cw * ch + eps
            iou = iou - (c_area - union) / c_area
    return iou.unsqueeze(-1)


def _hybrid_candidates(lb, nc, width, device):
    """Turn ground-truth rows (cls, xc, yc, w, h in pixels) into confident prediction rows (--save-hybrid)."""
    v = torch.zeros((len(lb), width), device=device)
    v[:, :4] = lb[:, 1:5]
    v[:, 4] = 1.0
    v[torch.arange(len(lb)), lb[:, 0].long() + 5] = 1.0
    return v


def _candidates(x, conf_thres, multi_label, nc, classes=None, max_nms=MAX_NMS, nm=0):
    """At most max_nms rows (x1, y1, x2, y2, conf, cls, nm mask coefficients), best first, from one
    image's predictions.

    conf = obj * cls. Only the max_nms best scores are gathered (a top-k, not a sort of every
    candidate), so an untrained model's flood of boxes costs a bounded amount of work.
    """
    scores = x[:, 5:5 + nc] * x[:, 4:5]
    if multi_label:
        if classes is not None:
            scores = scores * torch.isin(torch.arange(nc, device=x.device), _as_tensor(classes, x.device))
        cls = None
    else:
        scores, cls = scores.max(1, keepdim=True)
        if classes is not None:
            scores = scores * torch.isin(cls, _as_tensor(classes, x.device))
    flat = scores.flatten()
    conf, idx = flat.topk(min(max_nms, int((flat > conf_thres).sum())))
    i, j = (idx // nc, idx % nc) if multi_label else (idx, cls.view(-1)[idx])
    rows = [xywh2xyxy(x[i, :4]), conf[:, None], j[:, None].float()]
    if nm:  # v7.0 multiplies the coefficients by objectness as well; kept so masks equal v7.0's
        rows.append(x[i, 5 + nc:5 + nc + nm] * x[i, 4:5])
    return torch.cat(rows, 1)


def _as_tensor(classes, device):
    return torch.as_tensor(classes, device=device).view(-1)


def non_max_suppression(prediction, conf_thres=0.25, iou_thres=0.45, classes=None, agnostic=False,
                        multi_label=False, labels=(), max_det=300, max_nms=MAX_NMS, nm=0):
    """Per-class NMS on decoded YOLOv5 output [B, N, 5 + nc + nm] (xywh pixels, sigmoid scores, then
    nm mask coefficients for a segmentation model).

    Returns a list of B tensors [n, 6 + nm] = (x1, y1, x2, y2, conf, cls, coefficients), best first;
    the coefficients come out multiplied by objectness, as v7.0's NMS leaves them (utils/masks.py).
    `labels` (per image, rows cls, xc, yc, w, h in pixels) are added as certain predictions
    (YOLOv5's --save-hybrid autolabelling). Classes never suppress each other unless `agnostic`:
    batched_nms offsets each class by the largest coordinate, the job YOLOv5's max_wh offset does.
    The work per image is bounded up front (the `max_nms` best candidates by score, YOLOv5's max_nms),
    so there is no time limit: results never depend on how busy the machine is.
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres={conf_thres} is not in [0, 1]")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres={iou_thres} is not in [0, 1]")
    if isinstance(prediction, (list, tuple)):  # eval-mode model output (decoded, raw)
        prediction = prediction[0]
    if prediction.dim() != 3 or prediction.shape[2] < 6 + nm:
        raise ValueError(f"prediction must be [batch, anchors, 5 + nc + nm] with nm={nm}, got "
                         f"{tuple(prediction.shape)}")
    bs, nc = prediction.shape[0], prediction.shape[2] - 5 - nm
    multi_label &= nc > 1  # one class: nothing to gain from several labels per box
    output = [torch.zeros((0, 6 + nm), device=prediction.device)] * bs
    keep_mask = prediction[..., 4] > conf_thres
    for xi, x in enumerate(prediction):
        x = x[keep_mask[xi]]
        if labels and len(labels[xi]):
            x = torch.cat((x, _hybrid_candidates(labels[xi], nc, x.shape[1], x.device)), 0)
        if not x.shape[0]:
            continue
        x = _candidates(x.float(), conf_thres, multi_label, nc, classes, max_nms, nm)
        if not x.shape[0]:
            continue
        groups = torch.zeros_like(x[:, 5]) if agnostic else x[:, 5]
        keep = torchvision.ops.batched_nms(x[:, :4], x[:, 4], groups, iou_thres)[:max_det]
        output[xi] = x[keep]
    return output
