"""Evaluation as a library: the validation loader and `evaluate(model, loader) -> EvalResult`.

Used alike by the trainer (per-epoch and final validation), distill/teacher_check.py (--t_val) and
val.py (a thin CLI over this module). `evaluate` never changes the model it is given: it runs on the
model as it is when its dtype already matches, else on its own cast copy, and puts every module's
train/eval mode back afterwards.
"""
import time
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.boxes import non_max_suppression, scale_boxes, xywh2xyxy, xyxy2xywh
from utils.cli import UserError
from utils.coco_eval import prediction_entries
from utils.seg_eval import (SEG_TABLE_HEADER, SEG_TABLE_ROW, image_gt_masks, match_masks, original_masks,
                             predicted_masks)
from utils.metrics import IOU_THRESHOLDS, ConfusionMatrix, ap_per_class, fitness, match_predictions, pr_curves
from utils.torch_utils import de_parallel

TABLE_HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
TABLE_ROW = "%22s" + "%11i" * 2 + "%11.3g" * 4
PER_CLASS_MAX_NC = 50  # stand-alone validation prints the per-class table below this many classes


class Profile:
    """Accumulating timer; waits for CUDA so it measures the work and not its launch."""

    def __init__(self, cuda=False):
        self.t, self.cuda = 0.0, cuda

    def __enter__(self):
        self._sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.t += time.perf_counter() - self.start

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()


@dataclass
class ClassMetrics:
    """One kind of metric (boxes, or masks): means and per-class arrays over `ap_class` (classes with labels)."""
    mp: float = 0.0
    mr: float = 0.0
    map50: float = 0.0
    map: float = 0.0
    maps: np.ndarray = None  # mAP@0.5:0.95 per class index (the mean where a class has no labels)
    ap_class: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    p: np.ndarray = None
    r: np.ndarray = None
    ap50: np.ndarray = None
    ap: np.ndarray = None

    def means(self):
        return float(self.mp), float(self.mr), float(self.map50), float(self.map)

    def row(self, i):
        """P, R, AP50, AP50-95 of the i-th class of ap_class (zeros when nothing was matched at all)."""
        return (0.0,) * 4 if self.p is None else (self.p[i], self.r[i], self.ap50[i], self.ap[i])


@dataclass
class EvalResult:
    """What one evaluation measured: box metrics, and mask metrics for a segmentation model scored
    on a loader with masks (else `mask` is None)."""
    box: ClassMetrics = field(default_factory=ClassMetrics)
    mask: ClassMetrics = None
    losses: tuple = (0.0, 0.0, 0.0)  # validation loss per batch: box, obj, cls (segmentation: box, seg, obj, cls)
    seen: int = 0
    nt: np.ndarray = None  # labels per class index
    times: tuple = (0.0, 0.0, 0.0)  # ms per image: pre-process, inference, NMS
    jdict: list = field(default_factory=list)  # COCO results entries when save_json
    names: dict = field(default_factory=dict)
    pycocotools: dict = None  # {'bbox' / 'segm': (mAP@0.5:0.95, mAP@0.5)} when computed

    @property
    def kinds(self):
        return (self.box,) if self.mask is None else (self.box, self.mask)

    def as_tuple(self):
        """YOLOv5's results tuple: (P, R, mAP50, mAP50-95, box, obj, cls val losses); segmentation as
        v7.0: (P, R, mAP50, mAP50-95 of boxes, the same of masks, box, seg, obj, cls val losses)."""
        return tuple(v for kind in self.kinds for v in kind.means()) + tuple(map(float, self.losses))

    @property
    def maps(self):
        """Per-class mAP@0.5:0.95 as YOLOv5 returns it (segmentation: box + mask, v7.0's sum)."""
        return sum(kind.maps for kind in self.kinds)

    @property
    def fitness(self):
        """What best.pt maximises: YOLOv5's 0.1 * mAP50 + 0.9 * mAP50-95 (segmentation: boxes' plus masks')."""
        return sum(float(fitness(np.array([kind.means()]))[0]) for kind in self.kinds)


def build_loader(data, task="val", imgsz=640, batch_size=32, stride=32, single_cls=False, workers=8, masks=False,
                 overlap=True, downsample_ratio=4):
    """The split's loader: rectangular batches padded by half a stride, as YOLOv5 validates.

    task 'speed' times the network fairly on square, unpadded batches of the val split. `masks` adds the
    instance masks (segmentation; layout and resolution as create_dataloader's options).
    """
    from utils.datasets import create_dataloader
    pad, rect = (0.0, False) if task == "speed" else (0.5, True)
    task = task if task in ("train", "val", "test") else "val"
    if not data.get(task):
        raise UserError(f"the dataset YAML defines no '{task}' split; choose --task from "
                         f"{[k for k in ('train', 'val', 'test') if data.get(k)]}")
    return create_dataloader(data[task], imgsz, batch_size, stride, rect=rect, workers=workers, pad=pad,
                             single_cls=single_cls, prefix=f"{task}: ", nc=int(data["nc"]), masks=masks,
                             overlap=overlap, downsample_ratio=downsample_ratio)[0]


@contextmanager
def _eval_mode(model):
    """model.eval() for the block, then every module's own .training flag back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _inference_model(model, half):
    """The model itself when its dtype is the one wanted, else a cast copy (the caller's stays as is).

    The trainer's EMA is float32: casting it in place to fp16 for validation would leave it
    updating in fp16 afterwards, where small EMA steps round away.
    """
    model = de_parallel(model)
    dtype = torch.float16 if half else torch.float32
    if next(model.parameters()).dtype == dtype:
        return model
    return deepcopy(model).to(dtype)


def _scaled_labels(labels, im_shape, shape, ratio_pad):
    """Labels (cls, xc, yc, w, h in input pixels) -> (cls, x1, y1, x2, y2) in original pixels."""
    tbox = xywh2xyxy(labels[:, 1:5])
    scale_boxes(im_shape, tbox, shape, ratio_pad)
    return torch.cat((labels[:, 0:1], tbox), 1)


def _save_txt(predn, save_conf, shape, file):
    """YOLO txt lines (cls xc yc w h [conf], normalised to the original image) for one image."""
    gn = torch.tensor(shape, dtype=torch.float32)[[1, 0, 1, 0]]  # w, h, w, h
    with open(file, "a") as f:
        for *xyxy, conf, cls in predn.tolist():
            xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(("%g " * len(line)).rstrip() % line + "\n")


def resolve_names(names, model, nc):
    """{class index: name} for nc classes, from `names` or the model's, numbered where missing."""
    names = names if names is not None else getattr(de_parallel(model), "names", None)
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names or {})
    return {i: names.get(i, str(i)) for i in range(nc)}


@torch.no_grad()
def evaluate(model, loader, conf_thres=0.001, iou_thres=0.6, max_det=300, half=False, single_cls=False,
             nc=None, names=None, compute_loss=None, plots=False, save_dir=None, save_txt=False,
             save_conf=False, save_hybrid=False, save_json=False, class_map=None, leave_bar=True):
    """Validate `model` on `loader` (batches of (imgs, targets, paths, shapes[, masks])); returns an EvalResult.

    A segmentation model on a loader with masks is scored on its boxes and its masks (utils/seg_eval.py),
    as v7.0's segment/val.py; on a box-only loader, on its boxes.
    half: fp16 inference on CUDA (on a half copy unless the model is half already). The validation
    loss (compute_loss) runs under autocast, which upcasts per op only what it needs.
    The NMS work per image is bounded by a pre-NMS top-k, so no time limit: the figure is the same
    on a busy and an idle machine. save_dir is needed by plots, save_txt and save_json.
    """
    device = next(model.parameters()).device
    half = half and device.type == "cuda"  # fp16 only pays (and is only supported well) on CUDA
    net = _inference_model(model, half)
    nc = nc or int(net.model[-1].nc)
    nc = 1 if single_cls else nc
    names = resolve_names(names, net, nc)
    class_map = class_map or list(range(max(nc, 1000)))
    save_dir = Path(save_dir) if save_dir is not None else None
    dataset = getattr(loader, "dataset", None)
    seg = getattr(net, "task", "detect") == "segment" and bool(getattr(dataset, "masks", False))
    with _eval_mode(net):
        state = _run_batches(net, loader, device, half, dict(
            conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det, single_cls=single_cls,
            compute_loss=compute_loss, plots=plots, save_dir=save_dir, save_txt=save_txt, save_conf=save_conf,
            save_hybrid=save_hybrid, save_json=save_json, class_map=class_map, names=names, nc=nc,
            leave_bar=leave_bar, seg=seg, overlap=seg and dataset.overlap))
    return _summarise(state, nc, names, max(len(loader), 1), plots, save_dir)


def _run_batches(net, loader, device, half, o):
    """The batch loop: inference, NMS, matching in original image space; collects the statistics."""
    cuda = device.type == "cuda"
    iouv = IOU_THRESHOLDS.to(device)
    confusion = ConfusionMatrix(nc=o["nc"])
    dt = Profile(cuda), Profile(cuda), Profile(cuda)
    loss = 0.0
    stats, jdict, seen = [], [], 0
    nm = net.model[-1].nm if o["seg"] else 0
    bar = tqdm(loader, desc=SEG_TABLE_HEADER if o["seg"] else TABLE_HEADER, bar_format="{l_bar}{bar:10}{r_bar}",
               leave=o["leave_bar"])
    for batch_i, (im, targets, paths, shapes, *masks) in enumerate(bar):
        with dt[0]:
            im = im.to(device, non_blocking=True)
            targets = targets.to(device).float()
            masks = masks[0].to(device) if o["seg"] else None
            im = (im.half() if half else im.float()) / 255
            nb, _, height, width = im.shape
        with dt[1]:
            preds, train_out = net(im)
            preds = preds[..., :5 + net.model[-1].nc + nm]  # a -seg model's coefficients only when masks are scored
        if o["compute_loss"]:
            with torch.autocast(device.type, enabled=half):  # upcasts inside, per op; no fp32 copy
                extra = (masks.float(),) if o["seg"] else ()
                loss = loss + o["compute_loss"](train_out, targets, *extra)[1].float()
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)  # to input pixels
        lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if o["save_hybrid"] else []
        with dt[2]:
            preds = non_max_suppression(preds, o["conf_thres"], o["iou_thres"], labels=lb, multi_label=True,
                                        agnostic=o["single_cls"], max_det=o["max_det"], nm=nm)
        for si, pred in enumerate(preds):
            seen += 1
            labels = targets[targets[:, 0] == si, 1:]
            seg = dict(proto=train_out[1][si], gt=image_gt_masks(masks, targets, si, len(labels), o["overlap"]),
                       im_shape=im.shape[2:]) if o["seg"] else None
            _process_image(pred, labels, im[si].shape[1:], Path(paths[si]), shapes[si], iouv, stats, jdict,
                           confusion, o, seg)
        if o["plots"] and batch_i < 3:
            _plot_batch(im, targets, preds, paths, batch_i, o, masks, train_out[1] if o["seg"] else None)
    return dict(stats=stats, jdict=jdict, seen=seen, dt=dt, loss=loss, confusion=confusion, seg=o["seg"])


def _plot_batch(im, targets, preds, paths, batch_i, o, masks=None, proto=None, max_det=300):
    """val_batch{i}_labels.jpg and _pred.jpg; with a -seg model's masks (labels' and predicted) too."""
    from utils.plots import output_to_target, plot_images
    label_masks = pred_masks = None
    if o["seg"]:
        label_masks = torch.zeros((len(targets), *masks.shape[-2:]), device=masks.device)
        for si in range(im.shape[0]):
            rows = targets[:, 0] == si
            label_masks[rows] = image_gt_masks(masks, targets, si, int(rows.sum()), o["overlap"])
        pred_masks = [predicted_masks(proto[si], p[:max_det], im.shape[2:]) for si, p in enumerate(preds)]
        pred_masks = torch.cat(pred_masks) if pred_masks else None
    d = o["save_dir"]
    plot_images(im, targets, paths, d / f"val_batch{batch_i}_labels.jpg", o["names"], label_masks)
    plot_images(im, output_to_target(preds, max_det), paths, d / f"val_batch{batch_i}_pred.jpg", o["names"],
                pred_masks)


def _process_image(pred, labels, im_shape, path, shape_info, iouv, stats, jdict, confusion, o, seg=None):
    """Match one image's detections to its labels; appends (correct boxes, conf, class, label classes
    [, correct masks]) to stats (and to jdict / txt / confusion). seg: proto, gt masks of a -seg model."""
    shape, ratio_pad = shape_info[0], shape_info[1]
    device = iouv.device
    none_correct = torch.zeros(pred.shape[0], len(iouv), dtype=torch.bool, device=device)
    if pred.shape[0] == 0:
        if labels.shape[0]:
            empty = torch.zeros(0, device=device)
            stats.append((none_correct, empty, empty, labels[:, 0], *((none_correct,) if seg else ())))
            if o["plots"]:
                confusion.process_batch(detections=None, labels=labels[:, 0])
        return
    pred_masks = predicted_masks(seg["proto"], pred, seg["im_shape"], fine=o["save_json"]) if seg else None
    if o["single_cls"]:
        pred[:, 5] = 0
    predn = pred[:, :6].clone()
    scale_boxes(im_shape, predn[:, :4], shape, ratio_pad)  # metrics in original pixels
    correct, correct_masks = none_correct, none_correct
    if labels.shape[0]:
        labelsn = _scaled_labels(labels, im_shape, shape, ratio_pad)
        correct = match_predictions(predn, labelsn, iouv)
        if seg:
            correct_masks = match_masks(pred_masks, seg["gt"], labels[:, 0], pred[:, 5], iouv)
        if o["plots"]:
            confusion.process_batch(predn, labelsn)
    stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0], *((correct_masks,) if seg else ())))
    if o["save_txt"]:
        _save_txt(predn, o["save_conf"], shape, file=o["save_dir"] / "labels" / f"{path.stem}.txt")
    if o["save_json"]:
        masks = original_masks(pred_masks, im_shape, shape, ratio_pad) if seg else None
        jdict.extend(prediction_entries(predn, path, o["class_map"], masks))


def _class_metrics(correct, conf, pred_cls, target_cls, nc, names, plots, save_dir, prefix=""):
    """Means, per-class arrays and (plots) the PR / F1 curves of one kind of true positives."""
    m = ClassMetrics()
    if correct.any():
        curves = pr_curves(correct, conf, pred_cls, target_cls)
        _, _, p, r, _, ap, m.ap_class = ap_per_class(correct, conf, pred_cls, target_cls, curves=curves)
        m.p, m.r, m.ap50, m.ap = p, r, ap[:, 0], ap.mean(1)
        m.mp, m.mr, m.map50, m.map = p.mean(), r.mean(), m.ap50.mean(), m.ap.mean()
        if plots:
            from utils.plots import plot_pr_curves
            plot_pr_curves(curves, save_dir, names, prefix)
    m.maps = np.zeros(nc) + m.map
    for i, c in enumerate(m.ap_class):
        m.maps[c] = m.ap[i]
    return m


def _summarise(state, nc, names, n_batches, plots, save_dir):
    """Metrics from the collected statistics (and the curve / confusion plots)."""
    res = EvalResult(seen=state["seen"], jdict=state["jdict"], names=names)
    stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*state["stats"])]
    res.nt = np.bincount(stats[3].astype(int), minlength=nc) if len(stats) else np.zeros(nc, dtype=int)
    seg = state["seg"]
    empty = [np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0)]
    box, conf, pred_cls, target_cls, *masks = stats or empty
    res.box = _class_metrics(box, conf, pred_cls, target_cls, nc, names, plots, save_dir, "Box" if seg else "")
    # v7.0 reads the masks' P and R at their own best F1, like the boxes'. (It also reports the boxes as 0 when
    # no mask at all is a true positive, a model with untrained masks; here each kind stands on its own.)
    if seg:
        res.mask = _class_metrics(masks[0] if masks else empty[0], conf, pred_cls, target_cls, nc, names, plots,
                                  save_dir, "Mask")
    if plots:
        from utils.plots import plot_confusion_matrix
        plot_confusion_matrix(state["confusion"].matrix, save_dir / "confusion_matrix.png", list(names.values()))
    res.times = tuple(x.t / max(res.seen, 1) * 1e3 for x in state["dt"])
    loss = state["loss"]
    res.losses = tuple((loss.cpu() / n_batches).tolist()) if torch.is_tensor(loss) else \
        (0.0,) * (4 if seg else 3)
    return res


def print_results(res, per_class=False):
    """The 'all' row of YOLOv5's table (the header is the progress bar's), and per class if asked;
    segmentation prints v7.0's box and mask columns."""
    row = TABLE_ROW if res.mask is None else SEG_TABLE_ROW
    print(row % ("all", res.seen, res.nt.sum(), *(v for kind in res.kinds for v in kind.means())))
    if res.nt.sum() == 0:
        print("WARNING: no labels found in the validation set, can not compute metrics without labels")
    if per_class and len(res.names) > 1:
        for i, c in enumerate(res.box.ap_class):
            print(row % (res.names[c], res.seen, res.nt[c], *(v for kind in res.kinds for v in kind.row(i))))
