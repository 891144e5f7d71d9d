"""Train a small YOLOv5 (student) with knowledge distillation from frozen teachers.

Every train.py flag works here; the distillation flags add terms to the detection loss each batch
(by default output distillation + soft-label KL, the best measured: README, "What distillation gained").
    python train_distillation.py                       # demo: yolov5n student, shipped demo teacher, synthetic data
    python train_distillation.py --data coco.yaml --cfg yolov5s.yaml --weights yolov5s.pt \
        --t_weights yolov5m.pt --imgsz 640 --epochs 100 --batch-size 64
    python train_distillation.py ... --d_feature cwd --d_standardize   # + feature distillation
    python train_distillation.py ... --t_weights yolov5m.pt yolov5l.pt  # two teachers
    python train_distillation.py ... --d_unlabeled ../datasets/more_images  # + unlabeled images
    python train_distillation.py --cfg yolov5n-seg.yaml --weights yolov5n.pt --t_weights yolov5s-seg.pt  # + masks
The formulas of each term are in README.md ("Distillation methods").
"""
import argparse
from pathlib import Path

import train
from distill.builder import DistillationBuilder
from distill.losses import DEFAULT_D_WEIGHT, DEFAULT_KL_ALPHA, FEATURE_WEIGHTS
from utils.cli import UserError

ROOT = Path(__file__).resolve().parent
DEMO_TEACHER = ROOT / "weights" / "demo_teacher_yolov5s.pt"


def build_parser():
    p = train.build_parser()
    p.description = "Train YOLOv5 with knowledge distillation"
    g = p.add_argument_group("distillation")
    g.add_argument("--t_weights", nargs="+", default=[str(DEMO_TEACHER)],
                   help="teacher checkpoint(s): official YOLOv5 .pt or this project's; several = several teachers")
    g.add_argument("--t_cfg", type=str, default="", help="teacher model YAML, to override the checkpoint's")
    g.add_argument("--d_output", action=argparse.BooleanOptionalAction, default=True,
                   help="output distillation: teacher-objectness weighted MSE of box/obj/cls predictions")
    g.add_argument("--d_weight", type=float, default=DEFAULT_D_WEIGHT,
                   help="gain of output distillation, per image (the reference fork's d_weight / its batch size)")
    g.add_argument("--d_fork_units", action="store_true",
                   help="--d_weight per batch as in the reference fork (its exact total; strength changes with batch)")
    g.add_argument("--d_kl", action=argparse.BooleanOptionalAction, default=True,
                   help="soft-label KL distillation of class scores (on with output distillation: best measured)")
    g.add_argument("--d_temperature", type=float, default=4.0, help="KL temperature T (loss x T^2)")
    g.add_argument("--d_alpha", type=float, default=DEFAULT_KL_ALPHA, help="KL gain alpha (x the class gain hyp cls)")
    g.add_argument("--d_feature", nargs="?", const="mse", default=None, choices=["mse", "cosine", "cwd"],
                   help="add feature distillation on the neck outputs that feed Detect, with this loss")
    g.add_argument("--d_feature_weight", type=float, default=None,
                   help=f"gain of feature distillation (default per loss: {FEATURE_WEIGHTS})")
    g.add_argument("--d_feature_layers", nargs="+", type=int, default=None,
                   help="student layer indices to distil (default: the Detect inputs)")
    g.add_argument("--t_feature_layers", nargs="+", type=int, default=None,
                   help="teacher layer indices paired with them (default: the same indices)")
    g.add_argument("--d_standardize", action="store_true",
                   help="standardise features per channel over batch and pixels first (PKD)")
    g.add_argument("--d_tau", type=float, default=1.0, help="CWD spatial-softmax temperature")
    g.add_argument("--d_multi", choices=["average", "per_teacher", "sum"], default="average",
                   help="several teachers: average their outputs then one loss, or one loss per teacher "
                        "averaged (per_teacher; 'sum' is its deprecated name)")
    g.add_argument("--d_mask", action=argparse.BooleanOptionalAction, default=None,
                   help="mask distillation: the student's mask probabilities learn the teacher's inside its boxes "
                        "(binary KL at --d_temperature, x T^2); default: on for -seg students")
    g.add_argument("--d_mask_weight", type=float, default=1.0,
                   help="gain of mask distillation (x the segmentation loss's gain, hyp box)")
    g.add_argument("--d_proto", nargs="?", const="mse", default=None, choices=["mse", "cosine", "cwd"],
                   help="prototype imitation: a feature term (with an adapter) from the student's mask prototypes "
                        "to the teacher's, with this loss")
    g.add_argument("--d_proto_weight", type=float, default=None,
                   help=f"gain of prototype imitation (default per loss: {FEATURE_WEIGHTS})")
    g.add_argument("--d_mix", nargs="+", type=float, default=None, metavar="ALPHA",
                   help="ALPHA_DET [ALPHA_SEG]: each task's loss becomes (1 - alpha) * hard + alpha * soft "
                        "(the multi-task KD recipe); default: the soft terms are added to the hard loss")
    g.add_argument("--d_off_last", type=int, default=0, help="switch distillation off for the last N epochs")
    g.add_argument("--d_unlabeled", nargs="+", default=None, metavar="PATH",
                   help="unlabeled images (folders, txt lists) the teachers also teach on; default: the dataset "
                        "YAML's `unlabeled:` entry ('' = none). The detection loss sees labelled images only")
    g.add_argument("--d_pseudo", type=float, default=None, metavar="CONF",
                   help="also train the detection loss on unlabeled images, with the teachers' detections "
                        "above CONF (after NMS) as their labels")
    g.add_argument("--t_val", nargs="?", const=True, default=False,
                   help="validate the teacher first; give a baseline results.csv or student .pt to compare")
    return p


def check_distillation_flags(opt):
    if opt.d_pseudo is not None and not 0 < opt.d_pseudo <= 1:
        raise UserError(f"--d_pseudo {opt.d_pseudo}: must be a confidence in (0, 1], e.g. 0.5")


def main(opt):
    check_distillation_flags(opt)
    return train.main(opt, DistillationBuilder, parser=build_parser())


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, lambda: train.parse_opt(parser=build_parser()))
