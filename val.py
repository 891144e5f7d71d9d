"""Validate a YOLOv5 model on a detection dataset (YOLOv5 val.py flags and output).

Usage:
    python val.py --weights yolov5n.pt --data coco128.yaml --img 640
    python val.py --weights best.pt --data data.yaml --task speed --batch 1
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.boxes import non_max_suppression, scale_boxes, xywh2xyxy, xyxy2xywh
from utils.files import increment_path
from utils.metrics import IOU_THRESHOLDS, ConfusionMatrix, ap_per_class, match_predictions
from utils.sources import check_imgsz
from utils.torch_utils import select_device

ROOT = Path(__file__).resolve().parent
TABLE_HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
TABLE_ROW = "%22s" + "%11i" * 2 + "%11.3g" * 4
MISSING_COCO_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # ids COCO reserves but never annotates


def coco80_to_coco91_class():
    """COCO category id (1-90, with gaps) of each of the 80 YOLO class indices."""
    return [i for i in range(1, 91) if i not in MISSING_COCO_IDS]


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


def save_one_txt(predn, save_conf, shape, file):
    """YOLO txt lines (cls xc yc w h [conf], normalised to the original image) for one image."""
    gn = torch.tensor(shape, dtype=torch.float32)[[1, 0, 1, 0]]  # w, h, w, h
    with open(file, "a") as f:
        for *xyxy, conf, cls in predn.tolist():
            xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(("%g " * len(line)).rstrip() % line + "\n")


def save_one_json(predn, jdict, path, class_map):
    """COCO results entries (top-left xywh in original pixels) for one image."""
    image_id = int(path.stem) if path.stem.isnumeric() else path.stem
    box = xyxy2xywh(predn[:, :4])
    box[:, :2] -= box[:, 2:] / 2  # centre -> top-left corner
    for p, b in zip(predn.tolist(), box.tolist()):
        jdict.append({"image_id": image_id, "category_id": class_map[int(p[5])],
                      "bbox": [round(x, 3) for x in b], "score": round(p[4], 5)})


def is_coco_dataset(data):
    """YOLOv5's test: the COCO val list (or folder) of the standard coco.yaml layout."""
    val = str(data.get("val") or "").replace("\\", "/")
    return val.endswith(("coco/val2017.txt", "coco/images/val2017"))


def coco_eval(anno_json, pred_json, image_ids=None):
    """mAP@0.5:0.95 and mAP@0.5 from pycocotools, or None (with the reason printed)."""
    anno_json = Path(anno_json)
    if not anno_json.exists():
        print(f"pycocotools evaluation skipped: no annotations JSON at {anno_json} "
              f"(predictions saved to {pred_json})")
        return None
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        print("pycocotools evaluation skipped: pycocotools is not installed (pip install pycocotools)")
        return None
    try:
        anno = COCO(str(anno_json))
        pred = anno.loadRes(str(pred_json))
        ev = COCOeval(anno, pred, "bbox")
        if image_ids is not None:
            ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return float(ev.stats[0]), float(ev.stats[1])
    except Exception as e:  # mismatched ids and the like: report, keep the repo metrics
        print(f"pycocotools unable to run: {e}")
        return None


def _load_standalone(weights, device, half):
    """Model from a checkpoint or YAML for a stand-alone run (fused, as YOLOv5 validates)."""
    from models.checkpoint import load_model
    if weights is None:
        raise ValueError("val.run needs --weights (or model= and dataloader= from the trainer)")
    weights = weights[0] if isinstance(weights, (list, tuple)) else weights
    model, meta = load_model(weights, device=device, fuse=True)
    return (model.half() if half else model.float()), meta


def _build_dataloader(data, task, imgsz, batch_size, stride, single_cls, workers):
    """The split's loader: rectangular batches padded by half a stride, as YOLOv5 validates."""
    from utils.datasets import create_dataloader
    pad, rect = (0.0, False) if task == "speed" else (0.5, True)  # square batches time the network fairly
    task = task if task in ("train", "val", "test") else "val"
    if not data.get(task):
        raise ValueError(f"the dataset YAML defines no '{task}' split; choose --task from "
                         f"{[k for k in ('train', 'val', 'test') if data.get(k)]}")
    return create_dataloader(data[task], imgsz, batch_size, stride, rect=rect, workers=workers, pad=pad,
                             single_cls=single_cls, prefix=f"{task}: ", nc=int(data["nc"]))[0]


def _resolve_names(names, model, nc):
    names = names if names is not None else getattr(model, "names", None)
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names or {})
    return {i: names.get(i, str(i)) for i in range(nc)}


def _scaled_labels(labels, im_shape, shape, ratio_pad):
    """Labels (cls, xc, yc, w, h in input pixels) -> (cls, x1, y1, x2, y2) in original pixels."""
    tbox = xywh2xyxy(labels[:, 1:5])
    scale_boxes(im_shape, tbox, shape, ratio_pad)
    return torch.cat((labels[:, 0:1], tbox), 1)


@torch.no_grad()
def run(data, weights=None, batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6, max_det=300,
        task="val", device="", workers=8, single_cls=False, verbose=False, save_txt=False,
        save_hybrid=False, save_conf=False, save_json=False, project=ROOT / "runs/val", name="exp",
        exist_ok=False, half=True, model=None, dataloader=None, save_dir=Path(""), plots=True,
        compute_loss=None, names=None, nms_time_limit=None):
    """Validate; returns ((P, R, mAP50, mAP50-95, box, obj, cls val losses), per-class mAP, ms per image).

    nms_time_limit: seconds per batch; None = YOLOv5's limit inside training, none stand-alone.
    """
    training = model is not None
    if nms_time_limit is None:
        nms_time_limit = None if training else math.inf
    if training:  # called by the trainer with its EMA model and val loader
        device = next(model.parameters()).device
        half &= device.type != "cpu"
        model.half() if half else model.float()
    else:
        device = select_device(device, batch_size=batch_size)
        half &= device.type == "cuda"  # fp16 only pays (and is only supported well) on CUDA
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        model, meta = _load_standalone(weights, device, half)
        imgsz = check_imgsz(imgsz or meta.get("imgsz") or 640, int(model.stride.max()))[0]  # square
    if not isinstance(data, dict):
        from utils.datasets import check_dataset
        data = check_dataset(data)
    model.eval()
    cuda = device.type == "cuda"
    is_coco = is_coco_dataset(data)
    nc = 1 if single_cls else int(data["nc"])
    if not training:
        model_nc = int(model.model[-1].nc)
        if not single_cls and model_nc != nc:
            raise ValueError(f"{weights} has {model_nc} classes but {data.get('yaml_file', 'the data')} "
                             f"has nc={nc}; pass matching --weights and --data")
        if cuda:  # the first CUDA call pays for kernel selection; keep it out of the timings
            model(torch.zeros(1, 3, imgsz, imgsz, device=device).to(next(model.parameters()).dtype))
        dataloader = _build_dataloader(data, task, imgsz, batch_size, int(model.stride.max()),
                                       single_cls, workers)
        (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)  # inputs are good
    names = _resolve_names(names, model, nc)
    class_map = coco80_to_coco91_class() if is_coco else list(range(1000))
    state = _evaluate(model, dataloader, device, half, conf_thres, iou_thres, max_det, single_cls,
                      save_hybrid, save_txt, save_conf, save_json, save_dir, plots, compute_loss,
                      names, nc, class_map, training, nms_time_limit)
    return _summarise(state, data, weights, nc, names, batch_size, imgsz, verbose, training, plots,
                      save_dir, save_json, save_txt, is_coco, dataloader, model)


def _evaluate(model, dataloader, device, half, conf_thres, iou_thres, max_det, single_cls, save_hybrid,
              save_txt, save_conf, save_json, save_dir, plots, compute_loss, names, nc, class_map, training,
              nms_time_limit):
    """The batch loop: inference, NMS, matching in original image space; collects the statistics."""
    cuda = device.type == "cuda"
    iouv = IOU_THRESHOLDS.to(device)
    confusion = ConfusionMatrix(nc=nc)
    dt = Profile(cuda), Profile(cuda), Profile(cuda)
    loss = torch.zeros(3, device=device)
    stats, jdict, seen = [], [], 0
    bar = tqdm(dataloader, desc=TABLE_HEADER, bar_format="{l_bar}{bar:10}{r_bar}", leave=not training)
    for batch_i, (im, targets, paths, shapes) in enumerate(bar):
        with dt[0]:
            im = im.to(device, non_blocking=True)
            targets = targets.to(device).float()
            im = (im.half() if half else im.float()) / 255
            nb, _, height, width = im.shape
        with dt[1]:
            preds, train_out = model(im)
        if compute_loss:
            loss += compute_loss([x.float() for x in train_out], targets)[1]
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)  # to input pixels
        lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if save_hybrid else []
        with dt[2]:
            # per-epoch validation keeps YOLOv5's NMS time limit (early epochs flood NMS); stand-alone
            # and final validation have none, so their metrics never depend on how busy the machine is
            preds = non_max_suppression(preds, conf_thres, iou_thres, labels=lb, multi_label=True,
                                        agnostic=single_cls, max_det=max_det, time_limit=nms_time_limit)
        for si, pred in enumerate(preds):
            labels = targets[targets[:, 0] == si, 1:]
            path, shape, ratio_pad = Path(paths[si]), shapes[si][0], shapes[si][1]
            seen += 1
            if pred.shape[0] == 0:
                if labels.shape[0]:
                    empty = torch.zeros(0, device=device)
                    stats.append((torch.zeros(0, len(iouv), dtype=torch.bool, device=device), empty, empty,
                                  labels[:, 0]))
                    if plots:
                        confusion.process_batch(detections=None, labels=labels[:, 0])
                continue
            if single_cls:
                pred[:, 5] = 0
            predn = pred.clone()
            scale_boxes(im[si].shape[1:], predn[:, :4], shape, ratio_pad)  # metrics in original pixels
            correct = torch.zeros(pred.shape[0], len(iouv), dtype=torch.bool, device=device)
            if labels.shape[0]:
                labelsn = _scaled_labels(labels, im[si].shape[1:], shape, ratio_pad)
                correct = match_predictions(predn, labelsn, iouv)
                if plots:
                    confusion.process_batch(predn, labelsn)
            stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
            if save_txt:
                save_one_txt(predn, save_conf, shape, file=save_dir / "labels" / f"{path.stem}.txt")
            if save_json:
                save_one_json(predn, jdict, path, class_map)
        if plots and batch_i < 3:
            from utils.plots import output_to_target, plot_images
            plot_images(im, targets, paths, save_dir / f"val_batch{batch_i}_labels.jpg", names)
            plot_images(im, output_to_target(preds), paths, save_dir / f"val_batch{batch_i}_pred.jpg", names)
    return dict(stats=stats, jdict=jdict, seen=seen, dt=dt, loss=loss, confusion=confusion)


def _summarise(state, data, weights, nc, names, batch_size, imgsz, verbose, training, plots, save_dir,
               save_json, save_txt, is_coco, dataloader, model):
    """Metrics table, speed line, plots, JSON/pycocotools; builds run()'s return value."""
    seen = state["seen"]
    stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*state["stats"])]
    mp = mr = map50 = map_ = 0.0
    ap_class, p, r, ap50, ap = [], [], [], [], []
    if len(stats) and stats[0].any():
        _, _, p, r, _, ap, ap_class = ap_per_class(*stats, plot=plots, save_dir=save_dir, names=names)
        ap50, ap = ap[:, 0], ap.mean(1)
        mp, mr, map50, map_ = p.mean(), r.mean(), ap50.mean(), ap.mean()
    nt = np.bincount(stats[3].astype(int), minlength=nc) if len(stats) else np.zeros(nc, dtype=int)
    print(TABLE_ROW % ("all", seen, nt.sum(), mp, mr, map50, map_))
    if nt.sum() == 0:
        print("WARNING: no labels found in the validation set, can not compute metrics without labels")
    if (verbose or (nc < 50 and not training)) and nc > 1 and len(stats):
        for i, c in enumerate(ap_class):
            print(TABLE_ROW % (names[c], seen, nt[c], p[i], r[i], ap50[i], ap[i]))
    t = tuple(x.t / max(seen, 1) * 1e3 for x in state["dt"])  # ms per image
    if not training:
        shape = (batch_size, 3, imgsz, imgsz)
        print(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {shape}" % t)
    if plots:
        state["confusion"].plot(save_dir=save_dir, names=list(names.values()))
    if save_json and len(state["jdict"]):
        result = _save_and_eval_json(state["jdict"], data, weights, save_dir, is_coco, dataloader)
        if result is not None:
            map_, map50 = result
    model.float()  # the trainer keeps training the float model
    if not training:
        s = f"\n{len(list(save_dir.glob('labels/*.txt')))} labels saved to {save_dir / 'labels'}" if save_txt else ""
        print(f"Results saved to {save_dir}{s}")
    maps = np.zeros(nc) + map_
    for i, c in enumerate(ap_class):
        maps[c] = ap[i]
    val_losses = (state["loss"].cpu() / max(len(dataloader), 1)).tolist()
    return (mp, mr, map50, map_, *val_losses), maps, t


def _save_and_eval_json(jdict, data, weights, save_dir, is_coco, dataloader):
    w = Path(weights[0] if isinstance(weights, (list, tuple)) else weights).stem if weights is not None else ""
    pred_json = save_dir / f"{w}_predictions.json"
    with open(pred_json, "w") as f:
        json.dump(jdict, f)
    print(f"Saved {len(jdict)} predictions to {pred_json}")
    anno_json = Path(data.get("path") or "../coco") / "annotations" / "instances_val2017.json"
    image_ids = None
    if is_coco:  # evaluate only the images that were validated
        image_ids = [int(Path(x).stem) for x in dataloader.dataset.im_files]
    print(f"\nEvaluating pycocotools mAP... ({anno_json})")
    return coco_eval(anno_json, pred_json, image_ids)


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=str, default=str(ROOT / "data/synthetic.yaml"), help="dataset.yaml path")
    parser.add_argument("--weights", nargs="+", type=str, default=[str(ROOT / "weights/demo_teacher_yolov5s.pt")],
                        help="model path(s): own or official YOLOv5 .pt")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=None,
                        help="inference size (pixels); default: the size the checkpoint was trained at, else 640")
    parser.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    parser.add_argument("--task", default="val", help="train, val, test or speed")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    parser.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    parser.add_argument("--verbose", action="store_true", help="report mAP by class")
    parser.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    parser.add_argument("--save-hybrid", action="store_true", help="save label+prediction hybrid results to *.txt")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file")
    parser.add_argument("--project", default=ROOT / "runs/val", help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                        help="save plots (curves, confusion matrix, batch mosaics); --no-plots to skip")
    parser.add_argument("--noplots", dest="plots", action="store_false", help="same as --no-plots")
    opt = parser.parse_args(argv)
    opt.save_txt |= opt.save_hybrid
    if opt.task not in ("train", "val", "test", "speed"):
        parser.error(f"--task {opt.task}: choose train, val, test or speed")
    return opt


def main(opt):
    from utils.logging import setup_cli_logging
    setup_cli_logging()  # dataset scan reports
    kwargs = vars(opt).copy()
    if opt.task in ("train", "val", "test"):
        if opt.conf_thres > 0.001:
            print(f"WARNING: confidence threshold {opt.conf_thres} > 0.001 produces invalid results")
        if opt.save_hybrid:
            print("WARNING: --save-hybrid returns high mAP from hybrid labels, not from predictions alone")
        return run(**kwargs)
    # speed: time each model at deployment thresholds on square batches
    kwargs.update(conf_thres=0.25, iou_thres=0.45, save_json=False, plots=False)
    results = None
    for w in opt.weights:
        results = run(**{**kwargs, "weights": w})
    return results


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, parse_opt)
