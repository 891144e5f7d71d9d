"""Validate a YOLOv5 model on a detection or segmentation dataset (YOLOv5 val.py flags and output).

A thin CLI over utils/evaluate.py: flags, loading the weights, printing and saving. A -seg checkpoint is
validated as v7.0's segment/val.py: box and mask metrics, masks read at full resolution, one per instance.

Usage:
    python val.py --weights yolov5n.pt --data coco128.yaml --img 640
    python val.py --weights best.pt --data data.yaml --task speed --batch 1
"""
import argparse
from pathlib import Path

import torch

from utils.cli import UserError
from utils.coco_eval import coco80_to_coco91_class, is_coco_dataset, save_and_evaluate
from utils.evaluate import PER_CLASS_MAX_NC, EvalResult, build_loader, evaluate, print_results
from utils.files import increment_path, shown_path
from utils.sources import check_imgsz
from utils.torch_utils import select_device

ROOT = Path(__file__).resolve().parent


def check_args(conf_thres, iou_thres, batch_size):
    """Refuse impossible thresholds and batch sizes before anything is loaded (one-line ValueError)."""
    for flag, value in (("--conf-thres", conf_thres), ("--iou-thres", iou_thres)):
        if not 0 <= value <= 1:
            raise UserError(f"{flag} {value} is out of range; give a value between 0 and 1")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} is out of range; give a whole number > 0")


def _load_model(weights, device, half):
    """Model from a checkpoint or YAML (fused, as YOLOv5 validates), fp16 when asked on CUDA."""
    from models.checkpoint import load_model
    weights = weights[0] if isinstance(weights, (list, tuple)) else weights
    if weights is None:
        raise UserError("val.py needs --weights (a .pt checkpoint)")
    model, meta = load_model(weights, device=device, fuse=True)
    return (model.half() if half else model.float()), meta, weights


@torch.no_grad()
def run(data, weights=None, batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6, max_det=300,
        task="val", device="", workers=8, single_cls=False, verbose=False, save_txt=False,
        save_hybrid=False, save_conf=False, save_json=False, project=ROOT / "runs/val", name="exp",
        exist_ok=False, half=True, plots=True):
    """Validate weights on data; returns ((P, R, mAP50, mAP50-95, box, obj, cls val losses),
    per-class mAP50-95, ms per image (pre-process, inference, NMS)), as YOLOv5's val.run does. A -seg
    model returns v7.0's segment/val.py tuple (P, R, mAP50, mAP50-95 of boxes, the same of masks, box, seg,
    obj, cls val losses) and per-class box + mask mAP50-95."""
    check_args(conf_thres, iou_thres, batch_size)
    device = select_device(device, batch_size=batch_size)
    half &= device.type == "cuda"  # fp16 only pays (and is only supported well) on CUDA
    if not isinstance(data, dict):
        from utils.dataset_yaml import check_dataset
        data = check_dataset(data)
    model, meta, weights = _load_model(weights, device, half)
    stride = int(model.stride.max())
    imgsz = check_imgsz(imgsz or meta.get("imgsz") or 640, stride)[0]  # square
    nc = 1 if single_cls else int(data["nc"])
    if not single_cls and int(model.model[-1].nc) != nc:
        raise UserError(f"{weights} has {int(model.model[-1].nc)} classes but {data.get('yaml_file', 'the data')} "
                         f"has nc={nc}; pass matching --weights and --data")
    # v7.0's segment/val.py reads masks one per instance at full resolution (its training-time validation
    # uses the training layout, 1/4 and overlapping; utils/tasks.py)
    seg = dict(masks=True, overlap=False, downsample_ratio=1) if model.task == "segment" else {}
    loader = build_loader(data, task, imgsz, batch_size, stride, single_cls, workers, **seg)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)  # made once weights and data are good
    (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":  # the first CUDA call pays for kernel selection; keep it out of the timings
        model(torch.zeros(1, 3, imgsz, imgsz, device=device).to(next(model.parameters()).dtype))
    class_map = coco80_to_coco91_class() if is_coco_dataset(data) else None
    res = evaluate(model, loader, conf_thres, iou_thres, max_det, half=half, single_cls=single_cls, nc=nc,
                   plots=plots, save_dir=save_dir, save_txt=save_txt, save_conf=save_conf, save_hybrid=save_hybrid,
                   save_json=save_json, class_map=class_map)
    print_results(res, per_class=verbose or nc < PER_CLASS_MAX_NC)
    shape = (batch_size, 3, imgsz, imgsz)
    print(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {shape}" % res.times)
    if save_json:
        _report_pycocotools(res, loader.dataset, data, class_map, save_dir, Path(weights).stem)
    labels = f"\n{len(list(save_dir.glob('labels/*.txt')))} labels saved to {shown_path(save_dir) / 'labels'}" if save_txt else ""
    print(f"Results saved to {shown_path(save_dir)}{labels}")
    return res.as_tuple(), res.maps, res.times


def _report_pycocotools(res: EvalResult, dataset, data, class_map, save_dir, stem):
    """pycocotools' mAP beside the project's, of boxes (and masks: 'segm'); YOLOv5 returns pycocotools'
    figures on COCO itself."""
    class_map = class_map or list(range(max(len(res.names), 1000)))
    kinds = {"bbox": res.box} if res.mask is None else {"bbox": res.box, "segm": res.mask}
    res.pycocotools = save_and_evaluate(res.jdict, dataset, data, res.names, class_map, save_dir, stem, tuple(kinds))
    for iou_type, (coco_map, coco_map50) in res.pycocotools.items():
        mine = kinds[iou_type]
        print(f"{iou_type} mAP@0.5:0.95 {mine.map:.4f} (this project, YOLOv5 method)  {coco_map:.4f} "
              f"(pycocotools, maxDets 100)\n{iou_type} mAP@0.5      {mine.map50:.4f} (this project)  "
              f"{coco_map50:.4f} (pycocotools)")
        if is_coco_dataset(data):
            mine.map, mine.map50 = coco_map, coco_map50


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
    check_args(opt.conf_thres, opt.iou_thres, opt.batch_size)
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
