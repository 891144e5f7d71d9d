"""Hard pseudo-labels for unlabeled images: the teachers' confident detections (--d_pseudo CONF).

Soft terms (output MSE, KL, features) teach the student on every image; pseudo-labels add the
detection loss on unlabeled images too, with the teacher's boxes above CONF (after NMS) as targets.
"""
import torch

from utils.boxes import non_max_suppression, xyxy2xywhn

PSEUDO_IOU = 0.45  # NMS IoU of the pseudo-labels (detect.py's default)


@torch.no_grad()
def pseudo_targets(head, levels, image_ids, img_hw, conf_thres, iou_thres=PSEUDO_IOU):
    """Training targets [n, 6] (image, class, xc, yc, w, h normalised) from the teacher's detections.

    `levels`: the teacher's raw levels for the whole batch; `image_ids` (long tensor): the images to
    label (their batch indices); `img_hw`: the batch's (height, width) in pixels.
    """
    device = levels[0].device
    if not len(image_ids):
        return torch.zeros((0, 6), device=device)
    decoded = head.decode([p[image_ids].float() for p in levels])  # a half teacher decodes in float
    detections = non_max_suppression(decoded, conf_thres, iou_thres)
    h, w = img_hw
    rows = []
    for image, det in zip(image_ids.tolist(), detections):
        if not len(det):
            continue
        xywh = xyxy2xywhn(det[:, :4], w=w, h=h, clip=True)
        keep = (xywh[:, 2:] > 0).all(1)
        n = int(keep.sum())
        rows.append(torch.cat((torch.full((n, 1), float(image), device=device), det[keep, 5:6], xywh[keep]), 1))
    return torch.cat(rows) if rows else torch.zeros((0, 6), device=device)
