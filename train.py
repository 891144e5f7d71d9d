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
from pathlib import Path

import torch.distributed as dist

from models.checkpoint import load_checkpoint
from models.yolo import load_model_yaml, yaml_task
from utils.cli import UserError, run_cli
from utils.files import increment_path, newest_last_checkpoint, resolve_file, yaml_load
from utils.logging import setup_cli_logging
from utils.objective import ObjectiveBuilder
from utils.torch_utils import LOCAL_RANK, RANK

ROOT = Path(__file__).resolve().parent
DEFAULT_CFG = "yolov5n.yaml"  # the demo's model when neither --cfg nor --weights is given
DEFAULT_DATA = ROOT / "data/synthetic.yaml"  # the embedded demo set; -seg models get its polygon twin
DEFAULT_SEG_DATA = ROOT / "data/synthetic-seg.yaml"
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)  # as YOLOv5: the machine's cores, at most 8
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
UNSUPPORTED = {"evolve": "--evolve (hyperparameter evolution)", "image_weights": "--image-weights",
               "quad": "--quad"}


def build_parser():
    """train.py's flags; train_distillation.py adds its own to this same parser."""
    p = argparse.ArgumentParser(description="Train YOLOv5", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=str, default="", help="initial weights (.pt); '' trains from scratch")
    p.add_argument("--cfg", type=str, default="",
                   help="model YAML (models/yolov5{n,s,m,l,x}.yaml); default: the --weights checkpoint's "
                        f"architecture, or {DEFAULT_CFG} from scratch")
    p.add_argument("--data", type=str, default=str(DEFAULT_DATA),
                   help=f"dataset YAML (default: the synthetic demo; {DEFAULT_SEG_DATA.name} for -seg models)")
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
    p.add_argument("--device", default=None, help="cuda device, i.e. 0 or 0,1,2,3 or cpu (default: first GPU, "
                   "else cpu; --resume keeps the run's)")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=["SGD", "Adam", "AdamW"], default="SGD", help="optimizer")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm (DDP on CUDA only)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"max dataloader workers per rank (default {DEFAULT_WORKERS}; --resume keeps the run's)")
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
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels, no cuDNN autotuning (bit-identical reruns on CUDA, slower)")
    p.add_argument("--compile", nargs="?", const="default", default=False, choices=COMPILE_MODES,
                   help="torch.compile the student's forward and backward and the teachers' forward, in this mode "
                        "(reduce-overhead: CUDA graphs; needs fixed shapes, so not with --multi-scale or --rect)")
    p.add_argument("--device-augment", action="store_true",
                   help="mosaic, perspective, HSV and flips on the training device (workers only decode and draw "
                        "the random numbers): for when the CPU loader bounds training; detection only")
    # segmentation (-seg models), as YOLOv5 v7.0's segment/train.py
    p.add_argument("--mask-ratio", type=int, default=4, help="segmentation: masks at 1/N of the input size")
    p.add_argument("--no-overlap", action="store_true",
                   help="segmentation: one mask per instance instead of one overlap map per image")
    return p


def parse_opt(argv=None, parser=None):
    """Parse and check the flags; every bad value stops here, before any work, with one line."""
    opt = (parser or build_parser()).parse_args(argv)
    for key, what in UNSUPPORTED.items():
        if getattr(opt, key, None):
            raise UserError(f"{what} is not supported by yolov5-distill yet; run without it")
    check_flag_values(opt)
    if not opt.resume:  # a resumed run keeps its own device and workers unless given again
        opt.device = "" if opt.device is None else opt.device
        opt.workers = DEFAULT_WORKERS if opt.workers is None else opt.workers
    return opt


# flag -> (valid when, the valid range in words)
FLAG_RANGES = {
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "imgsz": (lambda v: v >= 32, ">= 32 (rounded up to a multiple of the model stride)"),
    "workers": (lambda v: v is None or v >= 0, ">= 0"),
    "patience": (lambda v: v >= 0, ">= 0 (0 disables EarlyStopping)"),
    "save_period": (lambda v: v == -1 or v >= 1, ">= 1, or -1 to disable"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "close_mosaic": (lambda v: v >= 0, ">= 0"),
    "freeze": (lambda v: all(x >= 0 for x in v), ">= 0 (layer count, or layer indices)"),
    "seed": (lambda v: 0 <= v < 2 ** 32, "in [0, 2**32)"),
    "mask_ratio": (lambda v: v >= 1, ">= 1"),
}


def check_flag_values(opt):
    for key, (valid, allowed) in FLAG_RANGES.items():
        value = getattr(opt, key)
        if not valid(value):
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            raise UserError(f"--{key.replace('_', '-')} {shown}: must be {allowed}")
    if opt.compile == "reduce-overhead" and (opt.multi_scale or opt.rect):
        raise UserError("--compile reduce-overhead records CUDA graphs for fixed shapes: drop --multi-scale/--rect, "
                        "or use --compile default")
    if opt.weights and not Path(opt.weights).is_file():
        raise FileNotFoundError(f"--weights {opt.weights}: file not found (this project never downloads weights: "
                                "pass a local .pt such as weights/demo_teacher_yolov5s.pt, or --weights '' "
                                "to train from scratch)")


def prepare_run(opt, script="train.py", defaults=None):
    """Resolve --resume into the interrupted run's options, or pick a fresh runs/train/expN folder.

    `defaults`: the script's flag defaults, for options a resumed run saved before they existed.
    Everything that can refuse a --resume is checked here, before anything is written."""
    if opt.resume:
        return _resumed_options(opt, script, defaults or {})
    opt.resume_path = None
    if not opt.cfg and not opt.weights:
        opt.cfg = DEFAULT_CFG
    if Path(opt.data) == DEFAULT_DATA and model_task(opt) == "segment":  # the task follows the model
        opt.data = str(DEFAULT_SEG_DATA)
        print(f"--data: a -seg model trains on the synthetic set's polygons ({DEFAULT_SEG_DATA.name})")
    opt.hyp = opt.hyp or default_hyp(opt.data)
    opt.save_dir = str(_agreed_save_dir(opt))
    return opt


# Options whose absence in an older run's last.pt means something else than today's default.
OPTIONS_OF_OLDER_RUNS = {"d_fork_units": True}  # runs before per-image units trained with the fork's units


def _resumed_options(opt, script, defaults):
    path = Path(opt.resume) if isinstance(opt.resume, str) else newest_last_checkpoint(ROOT / "runs")
    if not path or not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint found ({path or 'no last.pt under runs/'})")
    ckpt = load_checkpoint(path)
    saved = ckpt.get("opt")
    if not saved:
        raise UserError(f"--resume {path}: it holds no training options; resume from a last.pt of this project")
    if not ckpt.get("optimizer"):
        raise UserError(f"--resume {path}: it holds no optimizer state (a finished run's best.pt is stripped); "
                        f"resume from {path.parent / 'last.pt'}, or fine-tune it with --weights {path}")
    if ckpt["epoch"] + 1 >= saved["epochs"]:
        raise UserError(f"--resume {path}: the run already finished its {saved['epochs']} epochs; "
                        f"to train more, start a new run with --weights {path}")
    trained_with = "train_distillation.py" if saved.get("t_weights") else "train.py"
    if trained_with != script:
        raise UserError(f"--resume {path}: the run was trained with {trained_with}; "
                        f"resume it with: python {trained_with} --resume {path}")
    keep = {k: getattr(opt, k) for k in ("device", "workers") if getattr(opt, k) is not None}
    # every option is read one way, opt.name: older runs get the options added since from the table above,
    # else today's defaults; the machine may differ after a crash (device, workers)
    opt = argparse.Namespace(**{**defaults, **OPTIONS_OF_OLDER_RUNS, **saved, **keep})
    opt.resume, opt.resume_path = str(path), str(path)
    opt.save_dir = str(path.parent.parent)
    return opt


def model_task(opt):
    """'segment' or 'detect': the task of --cfg, else of the --weights checkpoint's architecture."""
    cfg = load_model_yaml(opt.cfg) if opt.cfg else load_checkpoint(opt.weights)["model_yaml"]
    return yaml_task(cfg)


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


def main(opt, builder_class=ObjectiveBuilder, parser=None):
    """Train with parsed options; `builder_class(opt)` says what to optimise (utils/objective.py):
    the task loss alone here, + the teachers' terms for train_distillation.py."""
    from utils.trainer import Trainer  # imported late so `--help` stays fast

    setup_cli_logging()
    init_distributed(opt)
    try:
        defaults = vars((parser or build_parser()).parse_args([]))
        opt = prepare_run(opt, builder_class.script, defaults)
        try:
            return Trainer(opt, builder_class(opt)).train()
        except KeyboardInterrupt:
            raise KeyboardInterrupt(interrupted_message(opt, builder_class.script)) from None
    finally:
        if LOCAL_RANK != -1 and dist.is_initialized():
            dist.destroy_process_group()


def interrupted_message(opt, script="train.py"):
    """Ctrl-C: one line saying where the last finished epoch is and how to continue from it."""
    last = Path(opt.save_dir) / "weights" / "last.pt"
    if not last.exists():
        return "Interrupted before the first epoch finished: nothing saved to resume"
    return f"Interrupted: the last finished epoch is saved in {last}; continue with: python {script} --resume {last}"


if __name__ == "__main__":
    run_cli(main, parse_opt)
