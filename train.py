"""Train a YOLOv5 model on a detection dataset.

Usage (YOLOv5 flags):
    python train.py                                   # demo: yolov5n from scratch on the embedded synthetic set
    python train.py --data coco128.yaml --cfg yolov5s.yaml --weights '' --imgsz 640 --epochs 100
    python train.py --data VisDrone.yaml --weights yolov5s.pt --imgsz 640 --batch-size 32
    python train.py --resume                          # continue the newest interrupted run
    torchrun --nproc_per_node 2 train.py --device 0,1 ...   # DDP
"""
import argparse
import os
import sys
from pathlib import Path

import torch.distributed as dist

from models.checkpoint import load_checkpoint
from utils.files import increment_path, newest_last_checkpoint, resolve_file, yaml_load
from utils.logging import setup_cli_logging
from utils.torch_utils import LOCAL_RANK, RANK

ROOT = Path(__file__).resolve().parent
UNSUPPORTED = {"evolve": "--evolve (hyperparameter evolution)", "image_weights": "--image-weights",
               "quad": "--quad"}


def build_parser():
    """train.py's flags; train_distillation.py adds its own to this same parser."""
    p = argparse.ArgumentParser(description="Train YOLOv5", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=str, default="", help="initial weights (.pt); '' trains from scratch")
    p.add_argument("--cfg", type=str, default="yolov5n.yaml", help="model YAML (models/yolov5{n,s,m,l,x}.yaml)")
    p.add_argument("--data", type=str, default=str(ROOT / "data/synthetic.yaml"), help="dataset YAML")
    p.add_argument("--hyp", type=str, default="",
                   help="hyperparameter YAML (default: hyp.scratch-low.yaml; hyp.synthetic.yaml for synthetic data)")
    p.add_argument("--epochs", type=int, default=20, help="total training epochs (the default suits the synthetic demo)")
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all GPUs")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=160, help="train/val image size (pixels)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume the newest run, or the given last.pt")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--evolve", type=int, nargs="?", const=300, help="not supported (hyperparameter evolution)")
    p.add_argument("--cache", type=str, nargs="?", const="ram", choices=["ram", "disk"], help="cache images in ram or on disk")
    p.add_argument("--image-weights", action="store_true", help="not supported (weighted image sampling)")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=["SGD", "Adam", "AdamW"], default="SGD", help="optimizer")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm (DDP on CUDA only)")
    p.add_argument("--workers", type=int, default=2, help="max dataloader workers (per rank in DDP)")
    p.add_argument("--project", default=str(ROOT / "runs/train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--quad", action="store_true", help="not supported (quad dataloader)")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="save a checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--close-mosaic", type=int, default=0, help="turn mosaic off for the last N epochs")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision on CUDA")
    # speed: the defaults favour throughput; --deterministic trades it for bit-identical reruns
    p.set_defaults(workers=min(8, os.cpu_count() or 1))  # as YOLOv5: use the machine's cores
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels, no cuDNN autotuning (bit-identical reruns on CUDA, slower)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's forward (PyTorch 2)")
    return p


def parse_opt(argv=None, parser=None):
    opt = (parser or build_parser()).parse_args(argv)
    for key, what in UNSUPPORTED.items():
        if getattr(opt, key, None):
            raise SystemExit(f"{what} is not supported by yolov5-distill yet; run without it")
    return opt


def prepare_run(opt):
    """Resolve --resume into the interrupted run's options, or pick a fresh runs/train/expN folder."""
    if opt.resume:
        path = Path(opt.resume) if isinstance(opt.resume, str) else newest_last_checkpoint(ROOT / "runs")
        if not path or not path.exists():
            raise SystemExit(f"--resume: no checkpoint found ({path or 'no last.pt under runs/'})")
        saved = load_checkpoint(path).get("opt")
        if not saved:
            raise SystemExit(f"--resume: {path} holds no training options; it is not a last.pt of this project")
        keep = {"device": opt.device, "workers": opt.workers}  # the machine may differ after a crash
        opt = argparse.Namespace(**{**saved, **keep})
        opt.resume, opt.resume_path = str(path), str(path)
        opt.save_dir = str(path.parent.parent)
        return opt
    opt.resume_path = None
    opt.hyp = opt.hyp or default_hyp(opt.data)
    opt.save_dir = str(_agreed_save_dir(opt))
    return opt


def default_hyp(data):
    """YOLOv5's hyp.scratch-low.yaml, or the demo's hyp.synthetic.yaml when `data` is a synthetic set."""
    try:
        synthetic = "synthetic" in yaml_load(resolve_file(data))
    except (OSError, AttributeError, TypeError):
        synthetic = False  # check_dataset reports a bad --data later, with a better message
    return str(ROOT / "data/hyps" / ("hyp.synthetic.yaml" if synthetic else "hyp.scratch-low.yaml"))


def _agreed_save_dir(opt):
    """runs/train/expN chosen once by rank 0 and shared, so DDP ranks never race into exp2/exp3."""
    save_dir = [increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok) if RANK in (-1, 0) else None]
    if RANK != -1:
        dist.broadcast_object_list(save_dir, 0)
    return save_dir[0]


def init_distributed(opt):
    if LOCAL_RANK == -1:
        return
    backend = "gloo" if opt.device == "cpu" else "nccl"
    dist.init_process_group(backend=backend)


def main(opt, extra_loss_factory=None):
    """Train with parsed options; `extra_loss_factory` adds an extra loss term (distillation)."""
    from utils.trainer import Trainer  # imported late so `--help` stays fast

    setup_cli_logging()
    init_distributed(opt)
    try:
        opt = prepare_run(opt)
        if getattr(opt, "t_weights", None) and extra_loss_factory is None:
            raise SystemExit(f"{opt.save_dir} was trained with distillation (--t_weights {opt.t_weights}); "
                             "resume it with train_distillation.py --resume")
        return Trainer(opt, extra_loss_factory=extra_loss_factory).train()
    finally:
        if LOCAL_RANK != -1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(0 if main(parse_opt()) is not None else 1)
