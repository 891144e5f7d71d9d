"""Per-image detection loss and every distillation term at its default weight, at initialisation.

Builds the run exactly as train_distillation.py does (same flags, same augmented batches), then
for the first --batches batches prints the mean per-image detection loss and each term, so that
default gains can be checked against the detection loss on any dataset (docs/BENCHMARKS.md).

  python benchmarks/distill_scales.py --data data/synthetic.yaml --imgsz 160 --batch-size 16 --batches 4
  python benchmarks/distill_scales.py --data ../shared/datasets/coco128/coco128.yaml \
      --weights ../shared/weights/yolov5n.pt --t_weights ../shared/weights/yolov5n.pt --imgsz 320
"""
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import train  # noqa: E402
import train_distillation  # noqa: E402
from distill.builder import DistillationBuilder  # noqa: E402
from distill.losses import (DistillInputs, FeatureDistillation, OutputDistillation, SoftLabelKL,  # noqa: E402
                            loss_gains)
from distill.objective import match_feature_taps  # noqa: E402
from distill.teacher import run_teacher  # noqa: E402
from utils.trainer import Trainer  # noqa: E402


def methods(student, teacher, opt, hyp):
    """name -> (loss module, teacher layers) for every method at its default weight."""
    gains = loss_gains(hyp)
    out = {"output": (OutputDistillation(gains, opt.d_weight), None),
           "kl": (SoftLabelKL(T=opt.d_temperature, alpha=opt.d_alpha, gains=gains), None)}
    s_layers = student.detect_input_layers()
    for loss in ("mse", "cosine", "cwd"):
        for std in (False, True):
            s_ch, t_ch = match_feature_taps(student, teacher, s_layers, teacher.detect_input_layers(), "teacher")
            out[loss + ("+std" if std else "")] = (FeatureDistillation(s_ch, t_ch, loss=loss, standardize=std),
                                                   teacher.detect_input_layers())
    return out


@torch.no_grad()
def measure(trainer, n_batches):
    student = trainer.model
    teacher = trainer.objective.teachers[0]
    terms = methods(student, teacher, trainer.opt, trainer.hyp)
    sums = {"detection": 0.0, **{k: 0.0 for k in terms}}
    student.train()
    for i, (imgs, targets, _, _) in enumerate(trainer.train_loader):
        if i == n_batches:
            break
        imgs = imgs.float() / 255
        preds, feats = student(imgs, feature_layers=student.detect_input_layers())
        sums["detection"] += float(trainer.compute_loss(preds, targets)[0]) / imgs.shape[0]
        s_in, t_in = DistillInputs(preds, feats), run_teacher(teacher, imgs, teacher.detect_input_layers())
        for name, (term, _) in terms.items():
            sums[name] += float(term(s_in, t_in)[0])
    return {k: v / n_batches for k, v in sums.items()}


def main(argv=None):
    parser = train_distillation.build_parser()
    parser.add_argument("--batches", type=int, default=4, help="batches to average over")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        args.project, args.name, args.noplots, args.workers = tmp, "scales", True, 0
        opt = train.prepare_run(args)
        trainer = Trainer(opt, DistillationBuilder(opt))
        trainer._setup()
        result = measure(trainer, args.batches)
    det = result["detection"]
    print(f"{'term':<12}{'per image':>10}{'/ detection':>13}")
    for name, value in result.items():
        print(f"{name:<12}{value:>10.4f}{value / det:>13.2f}")
    return result


if __name__ == "__main__":
    main()
