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
class EvalResult:
    """What one evaluation measured. Per-class arrays cover `ap_class` (classes with labels)."""
    mp: float = 0.0
    mr: float = 0.0
    map50: float = 0.0
    map: float = 0.0
    losses: tuple = (0.0, 0.0, 0.0)  # box, obj, cls validation loss per batch
    maps: np.ndarray = None  # mAP@0.5:0.95 per class index (the mean where a class has no labels)
    seen: int = 0
    nt: np.ndarray = None  # labels per class index
    ap_class: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    p: np.ndarray = None
    r: np.ndarray = None
    ap50: np.ndarray = None
    ap: np.ndarray = None
    times: tuple = (0.0, 0.0, 0.0)  # ms per image: pre-process, inference, NMS
    jdict: list = field(default_factory=list)  # COCO results entries when save_json
    names: dict = field(default_factory=dict)
    pycocotools: tuple = None  # (mAP@0.5:0.95, mAP@0.5) when computed

    def as_tuple(self):
        """YOLOv5's results tuple: (P, R, mAP50, mAP50-95, box, obj, cls val losses)."""
        return (float(self.mp), float(self.mr), float(self.map50), float(self.map), *map(float, self.losses))

    @property
    def fitness(self):
        """What best.pt maximises: YOLOv5's 0.1 * mAP50 + 0.9 * mAP50-95."""
        return float(fitness(np.array(self.as_tuple()).reshape(1, -1))[0])


def build_loader(data, task="val", imgsz=640, batch_size=32, stride=32, single_cls=False, workers=8):
    """The split's loader: rectangular batches padded by half a stride, as YOLOv5 validates.

    task 'speed' times the network fairly on square, unpadded batches of the val split.
    """
    from utils.datasets import create_dataloader
    pad, rect = (0.0, False) if task == "speed" else (0.5, True)
    task = task if task in ("train", "val", "test") else "val"
    if not data.get(task):
        raise UserError(f"the dataset YAML defines no '{task}' split; choose --task from "
                         f"{[k for k in ('train', 'val', 'test') if data.get(k)]}")
    return create_dataloader(data[task], imgsz, batch_size, stride, rect=rect, workers=workers, pad=pad,
                             single_cls=single_cls, prefix=f"{task}: ", nc=int(data["nc"]))[0]


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
    """Validate `model` on `loader` (batches of (imgs, targets, paths, shapes)); returns an EvalResult.

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
    with _eval_mode(net):
        state = _run_batches(net, loader, device, half, dict(
            conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det, single_cls=single_cls,
            compute_loss=compute_loss, plots=plots, save_dir=save_dir, save_txt=save_txt, save_conf=save_conf,
            save_hybrid=save_hybrid, save_json=save_json, class_map=class_map, names=names, nc=nc,
            leave_bar=leave_bar))
    return _summarise(state, nc, names, max(len(loader), 1), plots, save_dir)


def _run_batches(net, loader, device, half, o):
    """The batch loop: inference, NMS, matching in original image space; collects the statistics."""
    cuda = device.type == "cuda"
    iouv = IOU_THRESHOLDS.to(device)
    confusion = ConfusionMatrix(nc=o["nc"])
    dt = Profile(cuda), Profile(cuda), Profile(cuda)
    loss = torch.zeros(3, device=device)
    stats, jdict, seen = [], [], 0
    bar = tqdm(loader, desc=TABLE_HEADER, bar_format="{l_bar}{bar:10}{r_bar}", leave=o["leave_bar"])
    for batch_i, (im, targets, paths, shapes) in enumerate(bar):
        with dt[0]:
            im = im.to(device, non_blocking=True)
            targets = targets.to(device).float()
            im = (im.half() if half else im.float()) / 255
            nb, _, height, width = im.shape
        with dt[1]:
            preds, train_out = net(im)
            preds = preds[..., :5 + net.model[-1].nc]  # boxes only: a -seg model appends mask coefficients
        if o["compute_loss"]:
            with torch.autocast(device.type, enabled=half):  # upcasts inside, per op; no fp32 copy
                loss += o["compute_loss"](train_out, targets)[1].float()
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)  # to input pixels
        lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if o["save_hybrid"] else []
        with dt[2]:
            preds = non_max_suppression(preds, o["conf_thres"], o["iou_thres"], labels=lb, multi_label=True,
                                        agnostic=o["single_cls"], max_det=o["max_det"])
        for si, pred in enumerate(preds):
            seen += 1
            _process_image(pred, targets[targets[:, 0] == si, 1:], im[si].shape[1:], Path(paths[si]),
                           shapes[si], iouv, stats, jdict, confusion, o)
        if o["plots"] and batch_i < 3:
            from utils.plots import output_to_target, plot_images
            d = o["save_dir"]
            plot_images(im, targets, paths, d / f"val_batch{batch_i}_labels.jpg", o["names"])
            plot_images(im, output_to_target(preds), paths, d / f"val_batch{batch_i}_pred.jpg", o["names"])
    return dict(stats=stats, jdict=jdict, seen=seen, dt=dt, loss=loss, confusion=confusion)


def _process_image(pred, labels, im_shape, path, shape_info, iouv, stats, jdict, confusion, o):
    """Match one image's detections to its labels; appends to stats (and jdict / txt / confusion)."""
    shape, ratio_pad = shape_info[0], shape_info[1]
    device = iouv.device
    if pred.shape[0] == 0:
        if labels.shape[0]:
            empty = torch.zeros(0, device=device)
            stats.append((torch.zeros(0, len(iouv), dtype=torch.bool, device=device), empty, empty,
                          labels[:, 0]))
            if o["plots"]:
                confusion.process_batch(detections=None, labels=labels[:, 0])
        return
    if o["single_cls"]:
        pred[:, 5] = 0
    predn = pred.clone()
    scale_boxes(im_shape, predn[:, :4], shape, ratio_pad)  # metrics in original pixels
    correct = torch.zeros(pred.shape[0], len(iouv), dtype=torch.bool, device=device)
    if labels.shape[0]:
        labelsn = _scaled_labels(labels, im_shape, shape, ratio_pad)
        correct = match_predictions(predn, labelsn, iouv)
        if o["plots"]:
            confusion.process_batch(predn, labelsn)
    stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
    if o["save_txt"]:
        _save_txt(predn, o["save_conf"], shape, file=o["save_dir"] / "labels" / f"{path.stem}.txt")
    if o["save_json"]:
        jdict.extend(prediction_entries(predn, path, o["class_map"]))


def _summarise(state, nc, names, n_batches, plots, save_dir):
    """Metrics from the collected statistics (and the curve / confusion plots)."""
    res = EvalResult(seen=state["seen"], jdict=state["jdict"], names=names)
    stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*state["stats"])]
    res.nt = np.bincount(stats[3].astype(int), minlength=nc) if len(stats) else np.zeros(nc, dtype=int)
    if len(stats) and stats[0].any():
        curves = pr_curves(*stats)
        _, _, p, r, _, ap, res.ap_class = ap_per_class(*stats, curves=curves)
        res.p, res.r, res.ap50, res.ap = p, r, ap[:, 0], ap.mean(1)
        res.mp, res.mr, res.map50, res.map = p.mean(), r.mean(), res.ap50.mean(), res.ap.mean()
        if plots:
            from utils.plots import plot_pr_curves
            plot_pr_curves(curves, save_dir, names)
    if plots:
        from utils.plots import plot_confusion_matrix
        plot_confusion_matrix(state["confusion"].matrix, save_dir / "confusion_matrix.png", list(names.values()))
    res.maps = np.zeros(nc) + res.map
    for i, c in enumerate(res.ap_class):
        res.maps[c] = res.ap[i]
    res.times = tuple(x.t / max(res.seen, 1) * 1e3 for x in state["dt"])
    res.losses = tuple((state["loss"].cpu() / n_batches).tolist())
    return res


def print_results(res, per_class=False):
    """The 'all' row of YOLOv5's table (the header is the progress bar's), and per class if asked."""
    print(TABLE_ROW % ("all", res.seen, res.nt.sum(), res.mp, res.mr, res.map50, res.map))
    if res.nt.sum() == 0:
        print("WARNING: no labels found in the validation set, can not compute metrics without labels")
    if per_class and len(res.names) > 1:
        for i, c in enumerate(res.ap_class):
            print(TABLE_ROW % (res.names[c], res.seen, res.nt[c], res.p[i], res.r[i], res.ap50[i], res.ap[i]))
