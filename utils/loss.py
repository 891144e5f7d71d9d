"""YOLOv5 (v6/v7) detection loss: target assignment, CIoU box loss, objectness and class BCE."""
import torch
import torch.nn as nn

from utils.boxes import bbox_iou
from utils.torch_utils import de_parallel

LEVEL_BALANCE = {3: [4.0, 1.0, 0.4]}  # objectness weight per level P3-P5: small-object levels count more
LEVEL_BALANCE_OTHER = [4.0, 1.0, 0.25, 0.06, 0.02]  # P3-P7 models
REQUIRED_HYP = ("box", "obj", "cls", "cls_pw", "obj_pw", "anchor_t")

# A target is also given to the two neighbouring cells nearest its centre (offset g = 0.5 cell):
# more positives per target, and the (2 * sigmoid - 0.5) xy parametrisation can reach them.
NEIGHBOUR_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


def smooth_bce(eps=0.0):
    """Positive and negative BCE targets with label smoothing eps."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Wraps a BCEWithLogitsLoss (keeping its pos_weight) with the focal modulation (1 - p_t)^gamma."""

    def __init__(self, loss_fcn, gamma=1.5, alpha=0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma, self.alpha = gamma, alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # modulate element by element, reduce afterwards

    def forward(self, pred, true):
        loss = self.loss_fcn(pred, true)
        prob = pred.sigmoid()
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_factor * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss


class ComputeLoss:
    """YOLOv5's loss for a model whose last layer is Detect.

    Reads `model.hyp`: box, obj, cls (gains), cls_pw, obj_pw (BCE pos_weight), anchor_t (max
    target/anchor side ratio), fl_gamma (focal loss when > 0), label_smoothing.
    The gains are used as given. YOLOv5's trainer rescales them before building the loss, and so
    must ours: box *= 3 / nl, cls *= nc / 80 * 3 / nl, obj *= (imgsz / 640) ** 2 * 3 / nl.
    Call: `loss(preds, targets)` with preds the train-mode list of [B, na, ny, nx, 5 + nc] logits
    and targets [n, 6] (image, class, xc, yc, w, h normalised) -> (total * B, [box, obj, cls]).
    `labelled` (bool [B], optional) limits the loss to those images: an unlabeled image has no boxes
    to learn from, and its objectness must not learn "background everywhere"; B is then their count.
    """

    def __init__(self, model):
        model = de_parallel(model)
        hyp = getattr(model, "hyp", None)
        if not isinstance(hyp, dict):
            raise ValueError("ComputeLoss needs model.hyp (a dict of hyperparameters) set before it is built")
        missing = [k for k in REQUIRED_HYP if k not in hyp]
        if missing:
            raise KeyError(f"model.hyp lacks {missing}")
        det = model.model[-1]
        device = next(model.parameters()).device
        self.hyp = hyp
        self.na, self.nc, self.nl = det.na, det.nc, det.nl
        self.nm = getattr(det, "nm", 0)  # a Segment head's mask coefficients follow the class scores
        self.anchors = det.anchors  # [nl, na, 2] in stride units; a buffer, so it follows the model
        self.device = device
        self.balance = LEVEL_BALANCE.get(self.nl, LEVEL_BALANCE_OTHER)
        self.cp, self.cn = smooth_bce(hyp.get("label_smoothing", 0.0))
        self.bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["cls_pw"]], device=device))
        self.bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["obj_pw"]], device=device))
        gamma = hyp.get("fl_gamma", 0.0)
        if gamma > 0:
            self.bce_cls, self.bce_obj = FocalLoss(self.bce_cls, gamma), FocalLoss(self.bce_obj, gamma)
        self.offsets = NEIGHBOUR_OFFSETS.to(device) * 0.5
        self._grid_gains = {}  # (grid sizes per level) -> [nl, 7] gains, copied to the device once

    def __call__(self, preds, targets, labelled=None):
        if len(preds) != self.nl:
            raise ValueError(f"expected {self.nl} prediction levels, got {len(preds)}")
        targets = targets.to(self.device, non_blocking=True)
        bs, labelled = self.images_counted(preds[0].shape[0], labelled)
        if bs == 0:  # nothing to learn from: a zero that keeps the graph
            return zero_loss(preds, 3, self.device)
        lbox, lobj, lcls = self.detection_terms(preds, self.build_targets(preds, targets), labelled)
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def images_counted(self, bs, labelled):
        """(images the loss covers, `labelled` on the device or None): all bs, or the labelled ones."""
        if labelled is None:
            return bs, None
        # a host tensor (built from the batch's paths): counting it costs no sync
        return int(labelled.sum()), labelled.to(self.device, non_blocking=True)

    def detection_terms(self, preds, assigned, labelled=None):
        """(box, obj, cls) terms, gains applied, from the levels and build_targets' assignment."""
        lbox = torch.zeros(1, device=self.device)
        lobj = torch.zeros(1, device=self.device)
        lcls = torch.zeros(1, device=self.device)
        tcls, tbox, indices, anchors = assigned[:4]
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=self.device)
            if b.shape[0]:
                pxy, pwh, _, pcls, _ = pi[b, a, gj, gi].split((2, 2, 1, self.nc, self.nm), 1)
                pbox = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * anchors[i]), 1)
                iou = bbox_iou(pbox, tbox[i], CIoU=True).squeeze(-1)
                lbox += (1.0 - iou).mean()
                # objectness learns how well its box fits; no gradient back into the box through it
                tobj[b, a, gj, gi] = iou.detach().clamp(0).to(tobj.dtype)
                if self.nc > 1:  # a single class needs no class score beyond objectness
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(b.shape[0], device=self.device), tcls[i]] = self.cp
                    lcls += self.bce_cls(pcls, t)
            if labelled is None:
                lobj += self.bce_obj(pi[..., 4], tobj) * self.balance[i]
            else:
                lobj += self.bce_obj(pi[..., 4][labelled], tobj[labelled]) * self.balance[i]
        return lbox * self.hyp["box"], lobj * self.hyp["obj"], lcls * self.hyp["cls"]

    def build_targets(self, preds, targets, rows=False):
        """Assign each target to anchors (by shape ratio) and cells (its own + two neighbours) per level.

        Returns per level: class ids, boxes (xy offset from the cell, wh) in grid units,
        indices (image, anchor, gy, gx) and the matched anchors; with `rows`, also the index of the
        target row each positive was assigned from (what a per-target term, e.g. a mask, looks up).
        """
        na, nt = self.na, targets.shape[0]
        tcls, tbox, indices, anch, trows = [], [], [], [], []
        row = torch.arange(nt, device=self.device).repeat(na, 1)  # [na, nt]: follows each target's copies
        gains = self.grid_gains(preds)
        ai = torch.arange(na, device=self.device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # [na, nt, 7]: + anchor index
        g, off = 0.5, self.offsets
        for i in range(self.nl):
            anchors, shape, gain = self.anchors[i], preds[i].shape, gains[i]
            t = targets * gain
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                keep = torch.max(r, 1 / r).max(2)[0] < self.hyp["anchor_t"]
                t, r = t[keep], row[keep]
                gxy = t[:, 2:4]
                gxi = gain[2:4] - gxy  # distance from the far edge (a slice: no index tensor to copy)
                left, top = ((gxy % 1 < g) & (gxy > 1)).T
                right, bottom = ((gxi % 1 < g) & (gxi > 1)).T
                use = torch.stack((torch.ones_like(left), left, top, right, bottom))
                t, r = t.repeat((5, 1, 1))[use], r.repeat((5, 1))[use]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[use]
            else:
                t, r = targets[0], row[0]
                offsets = 0
            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gi, gj = gij.T
            indices.append((b, a, gj.clamp(0, shape[2] - 1), gi.clamp(0, shape[3] - 1)))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
            trows.append(r)
        return (tcls, tbox, indices, anch, trows) if rows else (tcls, tbox, indices, anch)

    def grid_gains(self, preds):
        """Per level, the factors (1, 1, nx, ny, nx, ny, 1) taking normalised targets to grid units.

        Built on the host and copied once per set of grid sizes: a per-batch host-to-device copy
        would make the CPU wait for the GPU every step.
        """
        key = tuple(tuple(p.shape[2:4]) for p in preds)
        gains = self._grid_gains.get(key)
        if gains is None:
            if len(self._grid_gains) >= 64:  # --multi-scale visits many sizes; keep the cache small
                self._grid_gains.clear()
            gains = torch.tensor([[1, 1, nx, ny, nx, ny, 1] for ny, nx in key], dtype=torch.float32)
            gains = self._grid_gains[key] = gains.to(self.device)
        return gains


def zero_loss(tensors, n_items, device):
    """A zero loss that keeps the graph of `tensors`, and n_items zero items (a batch with nothing to learn)."""
    return sum(t.sum() for t in tensors) * 0.0, torch.zeros(n_items, device=device)
