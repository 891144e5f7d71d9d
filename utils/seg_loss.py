"""YOLOv5 v7.0 instance-segmentation loss: the detection terms plus a mask term per positive.

A positive (an anchor cell assigned to a target by ComputeLoss.build_targets) predicts nm mask
coefficients; its mask logits are coefficients @ prototypes of its image. The mask term is the
pixel-wise BCE of those logits against the target's ground-truth mask at prototype resolution,
summed only inside the target's box and divided by the box's area (so small and large objects
weigh alike), averaged over the image's positives; summed over images and levels, then scaled by
hyp['box'] / B (v7.0 uses the box gain for it).
"""
import torch
import torch.nn.functional as F

from utils.boxes import xywh2xyxy
from utils.loss import ComputeLoss, zero_loss
from utils.masks import crop_mask


class ComputeSegLoss(ComputeLoss):
    """Loss of a model whose last layer is Segment (reads model.hyp like ComputeLoss).

    Call: `loss(raw, targets, masks, labelled=None) -> (total * B, tensor([box, seg, obj, cls]).detach())`
    with raw = (levels, proto) the train-mode output, targets [n, 6] (image, class, xc, yc, w, h
    normalised) and masks in the loader's layout (utils/datasets.py): `overlap=True`: [B, h, w] maps
    of 1-based instance indices within each image, in the order of that image's rows in targets;
    else [n, h, w], one 0/1 mask per target row. Masks at another size than the prototypes are
    resized (nearest) to them. `labelled` as in ComputeLoss: B is then the labelled images' count.
    """

    def __init__(self, model, overlap=True):
        super().__init__(model)
        if not self.nm:
            raise ValueError("ComputeSegLoss needs a segmentation model (a Segment head with mask coefficients)")
        self.overlap = overlap

    def __call__(self, raw, targets, masks, labelled=None):
        (detection, segmentation), items = self.task_losses(raw, targets, masks, labelled)
        return detection + segmentation, items

    def task_losses(self, raw, targets, masks, labelled=None):
        """The loss split by task -> ((box + obj + cls, seg), items), both x B and differentiable:
        what a convex mix of each task's hard and soft loss (train_distillation.py --d_mix) needs."""
        levels, proto = raw
        if len(levels) != self.nl:
            raise ValueError(f"expected {self.nl} prediction levels, got {len(levels)}")
        targets = targets.to(self.device, non_blocking=True)
        bs, labelled = self.images_counted(proto.shape[0], labelled)
        if bs == 0:
            zero, items = zero_loss((*levels, proto), 4, self.device)
            return (zero, zero), items
        assigned = self.build_targets(levels, targets, rows=True)
        lbox, lobj, lcls = self.detection_terms(levels, assigned, labelled)
        lseg = self.mask_term(levels, proto, assigned, targets, masks) * (self.hyp["box"] / bs)
        return ((lbox + lobj + lcls) * bs, lseg * bs), torch.cat((lbox, lseg, lobj, lcls)).detach()

    def mask_term(self, levels, proto, assigned, targets, masks):
        """Sum over levels and images of the mean box-normalised mask BCE of the image's positives."""
        lseg = torch.zeros(1, device=self.device)
        _, _, indices, _, rows = assigned
        if not sum(b.shape[0] for b, *_ in indices):
            return lseg
        nb, _, mh, mw = proto.shape
        masks = masks.to(self.device, non_blocking=True).float()
        if tuple(masks.shape[-2:]) != (mh, mw):
            masks = F.interpolate(masks[None], (mh, mw), mode="nearest")[0]
        mask_ids = self.mask_ids(targets, nb)
        to_proto = torch.tensor([mw, mh, mw, mh], device=self.device, dtype=targets.dtype)
        for pi, (b, a, gj, gi), r in zip(levels, indices, rows):
            if not b.shape[0]:
                continue
            coeffs = pi[b, a, gj, gi][:, 5 + self.nc:]
            xywhn = targets[r, 2:6]
            boxes, area = xywh2xyxy(xywhn * to_proto), xywhn[:, 2:].prod(1)
            # group the positives by image (stable: each image keeps its positives' order); one sync per level
            order = torch.argsort(b, stable=True)
            counts = torch.bincount(b, minlength=nb).tolist()
            groups = zip(*(x[order].split(counts) for x in (coeffs, boxes, area, mask_ids[r])))
            for bi, (c, box, ar, ids) in enumerate(groups):
                if c.shape[0]:
                    gt = (masks[bi][None] == ids.view(-1, 1, 1)).float() if self.overlap else masks[ids]
                    lseg += self.image_mask_loss(gt, c, proto[bi], box, ar)
        return lseg

    def mask_ids(self, targets, nb):
        """Per target row, where its mask is: the 1-based index among its image's rows (the value its
        pixels hold in an overlap map), else the row itself (non-overlap masks follow the rows)."""
        if not self.overlap:
            return torch.arange(targets.shape[0], device=self.device)
        one_hot = F.one_hot(targets[:, 0].long(), nb)
        return (one_hot.cumsum(0) * one_hot).sum(1)

    @staticmethod
    def image_mask_loss(gt, coeffs, proto, boxes, area):
        """Mean over one image's positives of BCE(coeffs @ proto, gt) summed inside the box / box area:
        the in-box mean over the whole map, divided by the normalised box area."""
        nm, mh, mw = proto.shape
        logits = (coeffs @ proto.view(nm, -1)).view(-1, mh, mw)
        bce = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
        return (crop_mask(bce, boxes).mean(dim=(1, 2)) / area).mean()
