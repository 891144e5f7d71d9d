"""Detection metrics: matching, AP per class (YOLOv5 v7 method), confusion matrix, fitness."""
import numpy as np
import torch

from utils.boxes import box_iou

# numpy 2.0 renamed trapz to trapezoid; requirements.txt allows numpy 1.26 too
trapezoid = getattr(np, "trapezoid", None) or np.trapz

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)  # COCO's mAP@0.5:0.95 thresholds
CURVE_POINTS = 1000  # confidence grid for P/R/F1 curves


def fitness(x):
    """Model fitness from rows [P, R, mAP@0.5, mAP@0.5:0.95]: 0.1 * mAP50 + 0.9 * mAP50-95."""
    w = np.array([0.0, 0.0, 0.1, 0.9])
    return (np.asarray(x)[:, :4] * w).sum(1)


def smooth(y, f=0.05):
    """Box filter of width ~ f * 2 * len(y) (odd), edges padded with the end values."""
    nf = round(len(y) * f * 2) // 2 + 1
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def compute_ap(recall, precision):
    """AP from a recall/precision curve: precision envelope, then 101-point interpolated area (COCO).

    Returns (ap, envelope precision, recall) with the sentinel ends added.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))  # precision never rises as recall falls
    x = np.linspace(0, 1, 101)
    ap = trapezoid(np.interp(x, mrec, mpre), x)
    return ap, mpre, mrec


def pr_curves(tp, conf, pred_cls, target_cls, eps=1e-16):
    """Precision/recall curves and AP per class from matched predictions (YOLOv5 v7).

    tp [n, 10] bool (correct at each IoU threshold), conf [n], pred_cls [n], target_cls [m].
    Returns a dict over the classes present in target_cls: classes, nt (labels per class),
    px (confidence grid), p, r, f1 [nc, len(px)] against confidence, py (precision at the recall grid
    px, mAP@0.5 curve, [len(px), nc]) and ap [nc, 10]. Plotting lives in utils.plots.
    """
    tp, conf, pred_cls, target_cls = (np.asarray(a) for a in (tp, conf, pred_cls, target_cls))
    if tp.ndim == 1:
        tp = tp[:, None]
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    unique_classes, nt = np.unique(target_cls, return_counts=True)
    nc = unique_classes.shape[0]
    px = np.linspace(0, 1, CURVE_POINTS)
    ap, py = np.zeros((nc, tp.shape[1])), np.zeros((CURVE_POINTS, nc))
    p, r = np.zeros((nc, CURVE_POINTS)), np.zeros((nc, CURVE_POINTS))
    for ci, c in enumerate(unique_classes):
        i = pred_cls == c
        n_l, n_p = nt[ci], i.sum()
        if n_p == 0 or n_l == 0:
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_l + eps)
        precision = tpc / (tpc + fpc)
        # curves against confidence (conf falls along the list, so interpolate on -conf)
        r[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)
        p[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if j == 0:
                py[:, ci] = np.interp(px, mrec, mpre)  # precision at recall grid (mAP@0.5 curve)
    f1 = 2 * p * r / (p + r + eps)
    return dict(classes=unique_classes.astype(int), nt=nt, px=px, p=p, r=r, f1=f1, py=py, ap=ap)


def ap_per_class(tp, conf, pred_cls, target_cls, eps=1e-16, curves=None):
    """AP per class from matched predictions (YOLOv5 v7); `curves` = pr_curves(...) when already made.

    P, R and F1 are read at the confidence that maximises the (smoothed) class-mean F1.
    Returns (tp, fp, p, r, f1, ap [nc, 10], unique_classes) over the classes present in target_cls.
    """
    c = curves if curves is not None else pr_curves(tp, conf, pred_cls, target_cls, eps)
    i = smooth(c["f1"].mean(0), 0.1).argmax()
    p, r, f1 = c["p"][:, i], c["r"][:, i], c["f1"][:, i]
    tp = (r * c["nt"]).round()
    fp = (tp / (p + eps) - tp).round()
    return tp, fp, p, r, f1, c["ap"], c["classes"]


def _unique_pairs(matches):
    """Keep one (label, detection) pair per detection (its best IoU) and then one per label.

    As YOLOv5 v7 val.py: after the per-detection pass the pairs are ordered by detection index,
    so a label goes to the earliest (most confident, NMS output order) detection left for it.
    """
    matches = matches[matches[:, 2].argsort()[::-1]]
    matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
    return matches[np.unique(matches[:, 0], return_index=True)[1]]


def match_predictions(detections, labels, iouv=IOU_THRESHOLDS):
    """Which detections are true positives at each IoU threshold, by box IoU.

    detections [n, 6] (x1, y1, x2, y2, conf, cls), labels [m, 5] (cls, x1, y1, x2, y2), same pixel space.
    Returns bool [n, len(iouv)] on iouv's device.
    """
    iou = None
    if detections.shape[0] and labels.shape[0]:
        iou = box_iou(labels[:, 1:5].float(), detections[:, :4].float())
    return match_by_iou(iou, labels[:, 0], detections[:, 5], iouv, detections.shape[0])


def match_by_iou(iou, label_cls, det_cls, iouv=IOU_THRESHOLDS, n=None):
    """True positives [n, len(iouv)] from any IoU [m labels, n detections] (boxes or masks): a detection
    matches a label of its class, each label at most one detection (YOLOv5 v7's rule). iou None: none match."""
    iouv = torch.as_tensor(iouv)
    n = det_cls.shape[0] if n is None else n
    correct = np.zeros((n, iouv.shape[0]), dtype=bool)
    if iou is not None and iou.numel():
        iou = (iou * (label_cls[:, None] == det_cls[None])).cpu().numpy()  # one transfer per image
        for k, thr in enumerate(iouv.tolist()):
            li, di = np.nonzero(iou >= thr)
            if not li.shape[0]:
                continue
            matches = np.stack((li, di, iou[li, di]), 1).astype(np.float64)
            if matches.shape[0] > 1:
                matches = _unique_pairs(matches)
            correct[matches[:, 1].astype(int), k] = True
    return torch.tensor(correct, dtype=torch.bool, device=iouv.device)


class ConfusionMatrix:
    """Counts [predicted, true] over nc classes plus background (last row/column)."""

    def __init__(self, nc, conf=0.25, iou_thres=0.45):
        if nc < 1:
            raise ValueError(f"ConfusionMatrix needs nc >= 1, got {nc}")
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres

    def process_batch(self, detections, labels):
        """detections [n, 6] (x1, y1, x2, y2, conf, cls) or None; labels [m, 5] (cls, x1, y1, x2, y2)
        (or a [m] class vector when detections is None)."""
        if detections is None:
            for gc in torch.as_tensor(labels).view(-1).int().tolist():
                self.matrix[self.nc, gc] += 1  # missed object
            return
        detections = detections[detections[:, 4] > self.conf]
        gt_classes = labels[:, 0].int().tolist()
        det_classes = detections[:, 5].int().tolist()
        iou = box_iou(labels[:, 1:5].float(), detections[:, :4].float())
        li, di = torch.where(iou > self.iou_thres)
        matches = np.zeros((0, 3))
        if li.shape[0]:
            matches = torch.stack((li.double(), di.double(), iou[li, di].double()), 1).cpu().numpy()
            if matches.shape[0] > 1:  # best IoU per detection, then best IoU per label
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        m0, m1 = matches[:, 0].astype(int), matches[:, 1].astype(int)
        for i, gc in enumerate(gt_classes):
            j = np.flatnonzero(m0 == i)
            if len(j) == 1:
                self.matrix[det_classes[m1[j[0]]], gc] += 1
            else:
                self.matrix[self.nc, gc] += 1  # missed object
        for i, dc in enumerate(det_classes):
            if not (m1 == i).any():
                self.matrix[dc, self.nc] += 1  # detection of nothing

    def tp_fp(self):
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]
