"""Hard pseudo-labels for unlabeled images: the teachers' confident detections (--d_pseudo CONF).

Soft terms (output MSE, KL, features, masks) teach the student on every image; pseudo-labels add the
task loss on unlabeled images too, with the teachers' boxes above CONF (after NMS) as targets and, for
segmentation teachers, the teachers' masks of those boxes as their masks.
"""
import torch
import torch.nn.functional as F

from utils.boxes import non_max_suppression, xywh2xyxy, xyxy2xywhn
from utils.masks import crop_mask

PSEUDO_IOU = 0.45  # NMS IoU of the pseudo-labels (detect.py's default)


def flat_cells(levels):
    """Raw levels [B, na, ny, nx, no] -> [B, N, no], cells in Detect.decode's order."""
    return torch.cat([lvl.reshape(lvl.shape[0], -1, lvl.shape[-1]) for lvl in levels], 1)


@torch.no_grad()
def pseudo_targets(head, levels, image_ids, img_hw, conf_thres, iou_thres=PSEUDO_IOU, with_cells=False):
    """Training targets [n, 6] (image, class, xc, yc, w, h normalised) from the teacher's detections.

    `levels`: the teacher's raw levels for the whole batch; `image_ids` (long tensor): the images to
    label (their batch indices); `img_hw`: the batch's (height, width) in pixels. Mask coefficients of a
    segmentation head are not class scores: NMS reads the box and class columns only. `with_cells` also
    returns, per target, the index of the cell it was predicted at (where its mask coefficients are).
    """
    device = levels[0].device
    targets, cells = torch.zeros((0, 6), device=device), torch.zeros(0, dtype=torch.long, device=device)
    if len(image_ids):
        decoded = head.decode([p[image_ids].float() for p in levels])[..., :5 + head.nc]  # a half teacher: float
        index = torch.arange(decoded.shape[1], device=device, dtype=decoded.dtype).view(1, -1, 1)
        decoded = torch.cat((decoded, index.expand(decoded.shape[0], -1, 1)), -1)  # the cell rides along NMS
        detections = non_max_suppression(decoded, conf_thres, iou_thres, nm=1)
        h, w = img_hw
        rows = []
        for image, det in zip(image_ids.tolist(), detections):
            xywh = xyxy2xywhn(det[:, :4], w=w, h=h, clip=True)
            keep = (xywh[:, 2:] > 0).all(1)
            image_col = torch.full((int(keep.sum()), 1), float(image), device=device)
            rows.append((torch.cat((image_col, det[keep, 5:6], xywh[keep]), 1), det[keep, 6].long()))
        if rows:
            targets, cells = (torch.cat(parts) for parts in zip(*rows))
    return (targets, cells) if with_cells else targets


@torch.no_grad()
def pseudo_masks(teacher_outs, nc, targets, cells, mask_hw):
    """The teachers' masks of pseudo targets: per target, each teacher's mask probability (its coefficients
    at the target's cell @ its prototypes of the image), averaged over teachers, cropped to the box and
    thresholded at 0.5 -> bool [n, h, w] at `mask_hw`."""
    image = targets[:, 0].long()
    probs = 0
    for out in teacher_outs:
        coeffs = flat_cells(out.preds)[image, cells, 5 + nc:].float()
        probs = probs + torch.einsum('kc,kchw->khw', coeffs, out.protos[image].float()).sigmoid()
    probs = probs / len(teacher_outs)
    mh, mw = probs.shape[1:]
    masks = crop_mask(probs, xywh2xyxy(targets[:, 2:6] * targets.new_tensor([mw, mh, mw, mh]))) > 0.5
    if (mh, mw) != tuple(mask_hw):
        masks = F.interpolate(masks[None].float(), tuple(mask_hw), mode='nearest')[0] > 0.5
    return masks


def add_pseudo_masks(batch_masks, targets, masks, overlap):
    """The batch's segmentation targets with the pseudo targets' masks added, in the loader's layout
    (utils/datasets.py): overlap maps get each unlabeled image's masks painted largest first with their
    1-based index among that image's rows (the images had no rows before); per-row masks are appended."""
    if not overlap:
        return torch.cat((batch_masks, masks.to(batch_masks.dtype)))
    batch_masks = batch_masks.clone()
    image = targets[:, 0].long()
    for b in image.unique().tolist():
        rows = torch.nonzero(image == b).view(-1)
        order = masks[rows].sum((1, 2)).argsort(descending=True)  # small objects stay on top, as the loader
        for j in order.tolist():
            batch_masks[b][masks[rows[j]]] = j + 1
    return batch_masks
