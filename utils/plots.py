"""Plots: P/R/F1 curves, confusion matrix, results.png, label statistics, annotated image batches."""
import math
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from utils.boxes import xywh2xyxy, xyxy2xywh  # noqa: E402
from utils.cli import UserError  # noqa: E402
from utils.metrics import smooth  # noqa: E402

MAX_MOSAIC_SIZE = 1920  # pixels, longest side of a plotted batch
MAX_SUBPLOTS = 16  # images per batch mosaic
MAX_CURVE_LEGEND = 21  # above this many classes the per-class curves get no legend entries
MIN_PLOT_CONF = 0.25  # predictions below this are left out of batch mosaics (val runs at conf 0.001)


class Colors:
    """A fixed palette of distinct hues so one class keeps its colour across every plot."""

    def __init__(self, n=20):
        hsv = np.zeros((1, n, 3), np.uint8)
        hsv[0, :, 0] = (np.arange(n) * 180 / n * 7) % 180  # stride 7 hops around the wheel
        hsv[0, :, 1] = 200
        hsv[0, :, 2] = 230
        self.palette = [tuple(int(c) for c in rgb) for rgb in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]]

    def __call__(self, i, bgr=False):
        c = self.palette[int(i) % len(self.palette)]
        return c[::-1] if bgr else c


colors = Colors()


def blend(image, where, colour, alpha=0.5):
    """Paint `colour` at `alpha` over the pixels of uint8 HWC `image` that `where` indexes (a bool mask or
    np.nonzero's tuple), in place."""
    image[where] = (image[where].astype(np.float32) * (1 - alpha) + np.float32(colour) * alpha).round().astype(np.uint8)


class Annotator:
    """Draw labelled boxes and text on a uint8 HWC image with OpenCV (no fonts to download)."""

    def __init__(self, im, line_width=None):
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3:
            raise ValueError("Annotator needs a uint8 HxWx3 numpy image")
        self.im = np.ascontiguousarray(im)
        self.lw = line_width or max(round(sum(im.shape[:2]) / 2 * 0.003), 2)
        self.tf = max(self.lw - 1, 1)  # font thickness

    def box_label(self, box, label="", color=(128, 128, 128), txt_color=(255, 255, 255)):
        """Rectangle for xyxy `box`; `label` on a filled tag above it (inside when at the top edge)."""
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if label:
            scale = self.lw / 3
            w, h = cv2.getTextSize(label, 0, fontScale=scale, thickness=self.tf)[0]
            outside = p1[1] - h >= 3
            p2 = p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3
            cv2.rectangle(self.im, p1, p2, color, -1, cv2.LINE_AA)
            org = (p1[0], p1[1] - 2 if outside else p1[1] + h + 2)
            cv2.putText(self.im, label, org, 0, scale, txt_color, thickness=self.tf, lineType=cv2.LINE_AA)

    def masks(self, masks, colors, alpha=0.5):
        """Blend instance masks (bool [n, h, w] of the image's size, best first) in `colors` (one per
        mask, the image's channel order); the best mask is painted last so it stays on top. Draw
        them before the boxes so outlines and labels remain readable."""
        masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        if masks.shape[1:] != self.im.shape[:2]:
            raise ValueError(f"masks {masks.shape[1:]} do not match the image {self.im.shape[:2]}")
        for m, c in zip(masks[::-1], colors[::-1]):
            blend(self.im, np.nonzero(m), c, alpha)  # only the mask's pixels: cheap for many small instances

    def rectangle(self, xy, fill=None, outline=None, width=1):
        color = fill if fill is not None else outline
        cv2.rectangle(self.im, (int(xy[0]), int(xy[1])), (int(xy[2]), int(xy[3])), color,
                      -1 if fill is not None else width)

    def text(self, xy, text, txt_color=(255, 255, 255)):
        """Text with its top-left corner at xy."""
        scale = self.lw / 3
        h = cv2.getTextSize(text, 0, fontScale=scale, thickness=self.tf)[0][1]
        cv2.putText(self.im, text, (int(xy[0]), int(xy[1]) + h), 0, scale, txt_color,
                    thickness=self.tf, lineType=cv2.LINE_AA)

    def result(self):
        return self.im


# ----------------------------------------------------------------------------- metric curves
def _finish(fig, ax, save_path, xlabel, ylabel):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(save_path, dpi=250, bbox_inches="tight")
    plt.close(fig)


def plot_pr_curve(px, py, ap, save_path="pr_curve.png", names=()):
    """Precision-recall curve per class (legend when fewer than 21) and the class mean.

    py: precision at the recall grid px, [len(px), nc].
    """
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    py = np.asarray(py).reshape(len(px), -1)
    for i, y in enumerate(py.T):
        label = f"{names.get(i, i)} {ap[i, 0]:.3f}" if 0 < len(names) < MAX_CURVE_LEGEND else None
        ax.plot(px, y, linewidth=1, color="grey" if label is None else None, label=label)
    if py.shape[1]:
        ax.plot(px, py.mean(1), linewidth=3, color="blue", label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
    ax.set_title("Precision-Recall Curve")
    _finish(fig, ax, save_path, "Recall", "Precision")


def plot_mc_curve(px, py, save_path="mc_curve.png", names=(), xlabel="Confidence", ylabel="Metric"):
    """A metric (F1, P or R) against confidence per class, and the smoothed class mean with its peak."""
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    py = np.asarray(py)
    for i, y in enumerate(py):
        label = f"{names.get(i, i)}" if 0 < len(names) < MAX_CURVE_LEGEND else None
        ax.plot(px, y, linewidth=1, color="grey" if label is None else None, label=label)
    if len(py):
        y = smooth(py.mean(0), 0.05)
        ax.plot(px, y, linewidth=3, color="blue", label=f"all classes {y.max():.2f} at {px[y.argmax()]:.3f}")
    ax.set_title(f"{ylabel}-Confidence Curve")
    _finish(fig, ax, save_path, xlabel, ylabel)


def plot_pr_curves(curves, save_dir, names=(), prefix=""):
    """PR, F1, P and R curves of utils.metrics.pr_curves(...) output, as YOLOv5 saves them."""
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names or {})
    present = dict(enumerate(names.get(int(c), str(c)) for c in curves["classes"]))
    px, save_dir = curves["px"], Path(save_dir)
    plot_pr_curve(px, curves["py"], curves["ap"], save_dir / f"{prefix}PR_curve.png", present)
    plot_mc_curve(px, curves["f1"], save_dir / f"{prefix}F1_curve.png", present, ylabel="F1")
    plot_mc_curve(px, curves["p"], save_dir / f"{prefix}P_curve.png", present, ylabel="Precision")
    plot_mc_curve(px, curves["r"], save_dir / f"{prefix}R_curve.png", present, ylabel="Recall")


def plot_confusion_matrix(matrix, save_path="confusion_matrix.png", names=(), normalize=True):
    """Heat map of a [pred, true] matrix (+ background); columns normalised to sum 1."""
    matrix = np.asarray(matrix, dtype=float)
    nc = matrix.shape[0] - 1
    array = matrix / (matrix.sum(0).reshape(1, -1) + 1e-9) if normalize else matrix.copy()
    array[array < 0.005] = np.nan  # leave near-empty cells blank
    names = list(names.values()) if isinstance(names, dict) else list(names)
    ticks = names + ["background"] if 0 < nc < 99 and len(names) == nc else None
    fig, ax = plt.subplots(1, 1, figsize=(12, 9), tight_layout=True)
    im = ax.imshow(array, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax)
    if nc < 30:  # numbers only while they stay legible
        for (i, j), v in np.ndenumerate(array):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=7)
    if ticks:
        ax.set_xticks(range(nc + 1), ticks, rotation=90, fontsize=8)
        ax.set_yticks(range(nc + 1), ticks, fontsize=8)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix")
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(save_path, dpi=250)
    plt.close(fig)
    return save_path


# ----------------------------------------------------------------------------- training results
RESULTS_LAYOUT = ["train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
                  "val/box_loss", "val/obj_loss", "val/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]


def _moving_average(y, n=5):
    """Light smoothing for the dotted trend line; short series come back unchanged."""
    if len(y) < n:
        return y
    pad = n // 2
    yp = np.concatenate((np.full(pad, y[0]), y, np.full(pad, y[-1])))
    return np.convolve(yp, np.ones(n) / n, mode="valid")


def plot_results(file="results.csv", dir=""):
    """results.png beside a results.csv: YOLOv5's 10 panels plus one per extra `train/<name>` column."""
    import pandas as pd
    file = Path(file) if file else Path(dir) / "results.csv"
    if not file.exists():
        raise FileNotFoundError(f"{file} not found, nothing to plot")
    data = pd.read_csv(file)
    data.columns = [c.strip() for c in data.columns]
    if "epoch" not in data.columns:
        raise UserError(f"{file} has no 'epoch' column; is it a results.csv?")
    extra = [c for c in data.columns if c.startswith("train/") and c not in RESULTS_LAYOUT]
    panels = [c for c in RESULTS_LAYOUT if c in data.columns] + extra
    cols = 5
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3 * rows), tight_layout=True)
    axes = np.atleast_1d(axes).ravel()
    x = data["epoch"].to_numpy()
    for ax, name in zip(axes, panels):
        y = pd.to_numeric(data[name], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], marker=".", label=file.parent.name or "results", linewidth=2, markersize=8)
        ax.plot(x[ok], _moving_average(y[ok]), ":", label="smooth", linewidth=2)
        ax.set_title(name, fontsize=12)
    for ax in axes[len(panels):]:
        ax.axis("off")
    axes[0].legend()
    out = file.with_name("results.png")
    fig.savefig(out, dpi=200)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- label statistics
def plot_labels(labels, names=(), save_dir=Path("")):
    """labels.jpg: instances per class, box outlines (centred), centre and size distributions.

    `labels` is [n, 5] (class, xc, yc, w, h), normalised.
    """
    labels = np.asarray(labels, dtype=float).reshape(-1, 5)
    names = list(names.values()) if isinstance(names, dict) else list(names)
    c, b = labels[:, 0].astype(int), labels[:, 1:]
    nc = max(int(c.max()) + 1 if len(c) else 0, len(names), 1)
    fig, ax = plt.subplots(2, 2, figsize=(8, 8), tight_layout=True)
    ax = ax.ravel()
    counts = np.bincount(c, minlength=nc)
    bars = ax[0].bar(range(nc), counts, width=0.8)
    for i, bar in enumerate(bars):
        bar.set_color(np.array(colors(i)) / 255)
    ax[0].set_ylabel("instances")
    if 0 < len(names) < 30:
        ax[0].set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    else:
        ax[0].set_xlabel("classes")
    canvas = np.full((1000, 1000, 3), 255, np.uint8)  # every box centred, to compare shapes
    shapes = xywh2xyxy(np.concatenate((np.full((len(b), 2), 0.5), b[:, 2:]), 1)) * 1000
    for cls, box in zip(c[:1000], shapes[:1000]):
        cv2.rectangle(canvas, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), colors(cls), 1)
    ax[1].imshow(canvas)
    ax[1].axis("off")
    for a, (i, j, xl, yl) in zip(ax[2:], [(0, 1, "x", "y"), (2, 3, "width", "height")]):
        a.hist2d(b[:, i], b[:, j], bins=50, range=[[0, 1], [0, 1]], cmap="Blues", cmin=1)
        a.set_xlabel(xl)
        a.set_ylabel(yl)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(save_dir / "labels.jpg", dpi=200)
    plt.close(fig)
    return save_dir / "labels.jpg"


# ----------------------------------------------------------------------------- image batches
def output_to_target(output, max_det=300):
    """NMS output (list of [n, 6] xyxy, conf, cls) -> [m, 7] rows (image, cls, xc, yc, w, h, conf)."""
    rows = []
    for i, o in enumerate(output):
        o = o[:max_det, :6].detach().cpu().float()
        box, conf, cls = o.split((4, 1, 1), 1)
        rows.append(torch.cat((torch.full_like(conf, i), cls, xyxy2xywh(box), conf), 1))
    return torch.cat(rows, 0).numpy() if rows else np.zeros((0, 7))


def _to_numpy(x):
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _tile(images, ns, h, w, scale):
    """Batch [B, 3, H, W] -> one white canvas with the images on an ns x ns grid."""
    mosaic = np.full((ns * h, ns * w, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        mosaic[(i // ns) * h:(i // ns) * h + h, (i % ns) * w:(i % ns) * w + w] = im.transpose(1, 2, 0)
    if scale < 1:
        mosaic = cv2.resize(mosaic, (math.ceil(scale * ns * w), math.ceil(scale * ns * h)))
    return mosaic


def plot_images(images, targets, paths=None, fname="images.jpg", names=None, masks=None):
    """Save a mosaic of up to 16 batch images with their boxes (labels, or predictions with conf).

    images: [B, 3, H, W] RGB (uint8, or float in 0-1); targets: [n, 6] (image, cls, xc, yc, w, h)
    labels or [n, 7] predictions with conf; boxes normalised or in input pixels.
    masks: a segmentation model's instance masks [n, h, w], one per target row, of any resolution covering
    the whole input (the loader's 1/4 masks, or predicted ones); blended under the boxes in the class colour.
    """
    images, targets = _to_numpy(images), _to_numpy(targets).reshape(-1, targets.shape[-1] if len(targets) else 6)
    masks = None if masks is None else _to_numpy(masks).reshape(-1, *np.shape(masks)[-2:])
    if masks is not None and len(masks) != len(targets):
        raise ValueError(f"{len(masks)} masks for {len(targets)} target rows")
    if images.max(initial=0) <= 1:
        images = images * 255
    images = images.clip(0, 255).astype(np.uint8)[:MAX_SUBPLOTS]
    bs, _, h, w = images.shape
    ns = math.ceil(bs ** 0.5)
    scale = min(MAX_MOSAIC_SIZE / ns / max(h, w), 1.0)
    mosaic = _tile(images, ns, h, w, scale)
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names or {})
    annotator = Annotator(mosaic, line_width=max(round(scale * max(h, w) * ns / 400), 1))
    h, w = math.ceil(scale * h), math.ceil(scale * w)
    for i in range(bs):
        x, y = w * (i % ns), h * (i // ns)
        annotator.rectangle([x, y, x + w, y + h], outline=(255, 255, 255), width=2)
        if paths is not None and i < len(paths):
            annotator.text((x + 5, y + 5), Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        in_tile = targets[:, 0] == i
        if masks is not None:
            _draw_masks(annotator, targets[in_tile], masks[in_tile], x, y, w, h)
        _draw_targets(annotator, targets[in_tile], x, y, w, h, scale, names)
    out = cv2.cvtColor(annotator.result(), cv2.COLOR_RGB2BGR)
    Path(fname).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(fname), out)
    return Path(fname)


def _draw_targets(annotator, ti, x, y, w, h, scale, names):
    """Boxes of one tile; rows hold normalised or input-pixel xywh."""
    if not len(ti):
        return
    boxes = xywh2xyxy(ti[:, 2:6].copy())
    is_labels = ti.shape[1] == 6
    if boxes.max() <= 1.01:  # normalised
        boxes[:, [0, 2]] *= w
        boxes[:, [1, 3]] *= h
    elif scale < 1:
        boxes *= scale
    boxes[:, [0, 2]] += x
    boxes[:, [1, 3]] += y
    for j, box in enumerate(boxes):
        cls = int(ti[j, 1])
        if not is_labels and ti[j, 6] <= MIN_PLOT_CONF:
            continue
        name = names.get(cls, str(cls))
        label = name if is_labels else f"{name} {ti[j, 6]:.1f}"
        annotator.box_label(box, label, color=colors(cls))


def _draw_masks(annotator, ti, masks, x, y, w, h, alpha=0.5):
    """Blend one tile's instance masks (resized to the tile) in their class colours, predictions above
    MIN_PLOT_CONF only, like their boxes."""
    keep = np.ones(len(ti), bool) if ti.shape[1] == 6 else ti[:, 6] > MIN_PLOT_CONF
    if not keep.any():
        return
    tile = annotator.im[y:y + h, x:x + w]  # a view: blending writes into the mosaic
    th, tw = tile.shape[:2]  # the last row / column of tiles can be cut by the canvas edge
    for row, mask in zip(ti[keep], masks[keep]):
        resized = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)[:th, :tw] > 0.5
        blend(tile, resized, colors(int(row[1])), alpha)
