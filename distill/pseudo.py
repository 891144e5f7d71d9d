"""Hard pseudo-labels for unlabeled images: the teachers' confident detections (--d_pseudo CONF).

Soft terms (output MSE, KL, features) teach the student on every image; pseudo-labels add the
detection loss on unlabeled images too, with the teacher's boxes above CONF (after NMS) as targets.
"""
import torch

from utils.boxes import non_max_suppression

PSEUDO_IOU = 0.45  # NMS IoU of the pseudo-labels (detect.py's default)


@torch.no_grad()
def decode_levels(head, levels):
    """Raw Detect levels [B, na, ny, nx, no] -> [B, N, no]: xywh in pixels, sigmoid scores."""
    return torch.cat([head._decode(p.float(), i) for i, p in enumerate(levels)], 1)


@torch.no_grad()
def pseudo_targets(head, levels, image_ids, img_hw, conf_thres, iou_thres=PSEUDO_IOU):
    """Training targets [n, 6] (image, class, xc, yc, w, h normalised) from the teacher's detections.

    `levels`: the teacher's raw levels for the whole batch; `image_ids` (long tensor): the images to
    label (their batch indices); `img_hw`: the batch's (height, width) in pixels.
    """
    device = levels[0].device
    if not len(image_ids):
        return torch.zeros((0, 6), device=device)
    decoded = decode_levels(head, [p[image_ids] for p in levels])
    detections = non_max_suppression(decoded, conf_thres, iou_thres)
    h, w = img_hw
    scale = torch.tensor([w, h, w, h], device=device, dtype=torch.float32)
    rows = []
    for image, det in zip(image_ids.tolist(), detections):
        if not len(det):
            continue
        xyxy = det[:, :4].clamp(min=0) / scale
        xyxy = torch.minimum(xyxy, torch.ones_like(xyxy))
        xywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)
        keep = (xywh[:, 2:] > 0).all(1)
        n = int(keep.sum())
        rows.append(torch.cat((torch.full((n, 1), float(image), device=device), det[keep, 5:6], xywh[keep]), 1))
    return torch.cat(rows) if rows else torch.zeros((0, 6), device=device)
