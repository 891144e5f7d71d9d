"""The mask half of evaluating a YOLOv5 v7.0 segmentation model (utils/evaluate.py does the boxes and the loop).

Per image, v7.0's segment/val.py makes each detection's mask from its 32 coefficients and the image's
prototypes on the letterboxed input, and scores it against the ground-truth masks the loader drew:
- the predicted masks stay at prototype resolution (1/4 of the input), or are upsampled to the input
  when COCO JSON is written (v7.0 then scores the finer masks as well);
- ground-truth masks at another resolution are resized to the predicted ones (bilinear, > 0.5);
- a detection is a true positive at an IoU threshold when its mask IoU with a label of its class is
  above it, one detection per label (the box rule, utils.metrics.match_by_iou).
"""
import torch
import torch.nn.functional as F

from utils.masks import mask_iou, process_mask, process_mask_upsample, scale_masks
from utils.metrics import match_by_iou

SEG_TABLE_HEADER = ("%22s" + "%11s" * 10) % ("Class", "Images", "Instances", "Box(P", "R", "mAP50", "mAP50-95)",
                                             "Mask(P", "R", "mAP50", "mAP50-95)")
SEG_TABLE_ROW = "%22s" + "%11i" * 2 + "%11.3g" * 8


def image_gt_masks(masks, targets, si, n_labels, overlap):
    """Ground-truth masks [n_labels, h, w] (float 0/1) of batch image si, in its label-row order.

    overlap: masks is [B, h, w] of 1-based instance indices (the loader ordered the rows to match);
    else [n, h, w], one per target row of the batch."""
    if overlap:
        index = torch.arange(1, n_labels + 1, device=masks.device).view(-1, 1, 1)
        return (masks[si][None] == index).float()
    return masks[targets[:, 0] == si].float()


def predicted_masks(proto, pred, im_shape, fine=False):
    """Masks of NMS output pred [n, 6 + nm] on the letterboxed input of size im_shape (h, w): bool
    [n, h/4, w/4], or [n, h, w] when `fine` (v7.0's choice when it writes COCO JSON)."""
    if fine:
        return process_mask_upsample(proto, pred[:, 6:], pred[:, :4], im_shape)
    return process_mask(proto, pred[:, 6:], pred[:, :4], im_shape)


def match_masks(pred_masks, gt_masks, label_cls, pred_cls, iouv):
    """True positives [n, len(iouv)] of predicted masks [n, h, w] against the labels' masks [m, h', w']."""
    if gt_masks.shape[1:] != pred_masks.shape[1:]:
        gt_masks = F.interpolate(gt_masks[None].float(), pred_masks.shape[1:], mode="bilinear",
                                 align_corners=False)[0].gt(0.5)
    iou = mask_iou(gt_masks, pred_masks) if len(gt_masks) and len(pred_masks) else None
    return match_by_iou(iou, label_cls, pred_cls, iouv, pred_masks.shape[0])


def original_masks(pred_masks, im_shape, shape, ratio_pad):
    """Masks on the letterboxed input -> bool [n, h0, w0] on the original image, as uint8 numpy."""
    return scale_masks(im_shape, pred_masks, shape, ratio_pad).to("cpu", torch.uint8).numpy()
