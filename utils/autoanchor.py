"""AutoAnchor: check that the anchors fit the dataset's boxes, and recompute them when they don't.

Fit is measured as YOLOv5 does: a label box "fits" an anchor when neither side ratio exceeds
`thr` (hyp `anchor_t`); best possible recall (BPR) is the share of boxes that fit some anchor.
"""
import numpy as np
import torch

from utils.torch_utils import de_parallel

PREFIX = "AutoAnchor: "


def label_wh(dataset, imgsz, rng=None):
    """Label widths/heights in pixels at training size, with a +-10% scale jitter like augmentation."""
    shapes = imgsz * dataset.shapes / dataset.shapes.max(1, keepdims=True)
    scale = rng.uniform(0.9, 1.1, size=(shapes.shape[0], 1)) if rng is not None else 1.0
    wh = np.concatenate([l[:, 3:5] * s for s, l in zip(shapes * scale, dataset.labels) if len(l)], 0)
    return wh[(wh >= 2.0).any(1)].astype(np.float32)  # boxes under 2 px carry no shape information


def anchor_fit(anchors, wh, thr):
    """(best possible recall, anchors above threshold per box) for anchors [k, 2] and boxes [n, 2]."""
    r = wh[:, None] / anchors[None]
    ratio = np.minimum(r, 1 / r).min(2)  # worst side ratio, per box and anchor
    best = ratio.max(1)
    return float((best > 1 / thr).mean()), float((ratio > 1 / thr).sum(1).mean())


def _fitness(anchors, wh, thr):
    r = wh[:, None] / anchors[None]
    best = np.minimum(r, 1 / r).min(2).max(1)
    return float((best * (best > 1 / thr)).mean())


def kmeans(points, k, iters=30, rng=None):
    """Plain Lloyd k-means on whitened points; deterministic for a given rng."""
    rng = rng or np.random.default_rng(0)
    centres = points[rng.choice(len(points), k, replace=False)]
    for _ in range(iters):
        assign = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if (assign == j).any():
                centres[j] = points[assign == j].mean(0)
    return centres


def kmean_anchors(wh, n=9, thr=4.0, gen=1000, seed=0, verbose=True):
    """Anchors [n, 2] in pixels: k-means on box sizes, refined by a mutation search on the fit metric."""
    rng = np.random.default_rng(seed)
    if len(wh) < n:
        raise ValueError(f"{PREFIX}{len(wh)} label boxes are too few to fit {n} anchors")
    sigma = wh.std(0)
    anchors = kmeans(wh / sigma, n, rng=rng) * sigma
    best = _fitness(anchors, wh, thr)
    for _ in range(gen):
        mutation = np.ones_like(anchors)
        while (mutation == 1).all():  # guarantee a change
            mutation = (rng.random(anchors.shape) < 0.9) * rng.random() * rng.standard_normal(anchors.shape) * 0.1 + 1
            mutation = mutation.clip(0.3, 3.0)
        candidate = (anchors * mutation).clip(min=2.0)
        f = _fitness(candidate, wh, thr)
        if f > best:
            best, anchors = f, candidate
    anchors = anchors[np.argsort(anchors.prod(1))]  # small to large: P3 gets the smallest
    if verbose:
        bpr, aat = anchor_fit(anchors, wh, thr)
        print(f"{PREFIX}evolved anchors: BPR {bpr:.4f}, {aat:.2f} anchors/target, fitness {best:.4f}")
    return anchors


def check_anchors(dataset, model, thr=4.0, imgsz=640, seed=0, pretrained=None):
    """Replace the model's anchors in place when BPR < 0.98 and the new ones fit better.

    `pretrained` (the weights' name): only report the fit. A pretrained Detect head regresses boxes
    relative to its own anchors; new anchors would throw that away (official yolov5n.pt fine-tuned on
    coco128 at 128 px: mAP@0.5 0.213 after one epoch with its anchors, 0.010 with evolved ones)."""
    detect = de_parallel(model).model[-1]
    stride = detect.stride.view(-1, 1, 1).to(detect.anchors.device)
    anchors = (detect.anchors * stride).view(-1, 2).cpu().numpy()
    wh = label_wh(dataset, imgsz, rng=np.random.default_rng(seed))
    if not len(wh):
        print(f"{PREFIX}no labels to check anchors against, keeping the config's anchors")
        return False
    bpr, aat = anchor_fit(anchors, wh, thr)
    msg = f"{PREFIX}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). "
    if bpr > 0.98:
        print(msg + "Current anchors are a good fit to the dataset.")
        return False
    if len(wh) < anchors.shape[0]:  # k-means needs at least one box per anchor
        print(msg + f"WARNING: only {len(wh)} usable label boxes, too few to compute {anchors.shape[0]} "
              "anchors; keeping the config's anchors")
        return False
    if pretrained:
        print(msg + f"Keeping the anchors of {pretrained}: its Detect head was trained for them "
              "(train from scratch with --cfg to evolve anchors for this data)")
        return False
    print(msg + "Anchors are a poor fit to the dataset, computing new ones...")
    new = kmean_anchors(wh, n=anchors.shape[0], thr=thr, seed=seed)
    new_bpr, _ = anchor_fit(new, wh, thr)
    if new_bpr <= bpr:
        print(f"{PREFIX}new anchors are not better (BPR {new_bpr:.4f}), keeping the originals")
        return False
    new_t = torch.tensor(new, dtype=detect.anchors.dtype, device=detect.anchors.device)
    detect.anchors[:] = new_t.view_as(detect.anchors) / stride
    print(f"{PREFIX}new anchors saved to the model (BPR {new_bpr:.4f}); update your model YAML to reuse them.")
    return True
