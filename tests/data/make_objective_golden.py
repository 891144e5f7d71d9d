"""Golden values of three distillation batches computed by the pre-objective code (Trainer._train_step + Distiller).

Run once at 6ac651f: python tests/data/make_objective_golden.py tests/data/objective_golden.pt. The objective refactor
removes this script (it uses the old API); tests/test_objective.py checks the new objective against its output."""
import sys
from argparse import Namespace
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "tests"))
import cv2, numpy as np, torch
import train_distillation
from distill.distiller import build_distiller
from models.yolo import Model
from utils.files import yaml_load
from utils.loss import ComputeLoss
from utils.trainer import Trainer
from utils.augment import letterbox

NC, IMGSZ = 8, 128
def batch():
    ims = []
    for name in ("shapes1.jpg", "shapes2.jpg"):
        im = letterbox(cv2.imread(str(ROOT / "data/images" / name)), IMGSZ, auto=False)[0]
        im = np.ascontiguousarray(im.transpose(2, 0, 1)[::-1])
        ims.append(torch.from_numpy(im))
    ims = ims + [im.flip(-1) for im in ims]   # images 2, 3: unlabeled mirrored copies
    imgs = torch.stack(ims).float() / 255
    targets = torch.tensor([[0, 1, 0.3, 0.4, 0.2, 0.3], [0, 4, 0.7, 0.6, 0.25, 0.2], [1, 2, 0.5, 0.5, 0.4, 0.4]])
    labelled = torch.tensor([True, True, False, False])
    return imgs, targets, labelled

def main(out, flags, all_labelled):
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=NC)
    hyp = yaml_load(ROOT / "data/hyps/hyp.scratch-low.yaml")
    hyp["box"] *= 1.0; hyp["cls"] *= NC / 80; hyp["obj"] *= (IMGSZ / 640) ** 2; hyp["label_smoothing"] = 0.0
    model.hyp = hyp
    model.names = [f"c{i}" for i in range(NC)]
    opt = train_distillation.build_parser().parse_args(
        ["--t_weights", str(ROOT / "weights/demo_teacher_yolov5s.pt"), *flags])
    t = Trainer.__new__(Trainer)
    t.opt, t.device, t.cuda, t.model = Namespace(sync_bn=False, amp=False), torch.device("cpu"), False, model
    t.compute_loss = ComputeLoss(model)
    torch.manual_seed(100)
    t.extra = build_distiller(model, None, t.device, opt)
    t.scaler, t.amp_dtype = torch.amp.GradScaler("cuda", enabled=False), None
    t.forward = t.model
    imgs, targets, labelled = batch()
    labelled = None if all_labelled else labelled
    model.train()
    items = t._train_step(imgs, targets, labelled)
    names = ["box_loss", "obj_loss", "cls_loss"] + t._extra_names()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    adapter_grads = {n: p.grad.detach().clone() for n, p in t.extra.named_parameters() if p.grad is not None}
    g = torch.Generator().manual_seed(1)
    summary = lambda d: {n: torch.stack([v.norm(), (v * torch.randn(v.shape, generator=g)).sum()]) for n, v in d.items()}
    return {"flags": list(flags), "all_labelled": all_labelled, "items": dict(zip(names, items.tolist())),
            "grads": summary(grads), "adapter_grads": summary(adapter_grads)}

cases = {"pseudo_cwd": main(None, ["--d_feature", "cwd", "--d_pseudo", "0.25"], False),
         "fork_units_mse": main(None, ["--d_fork_units", "--d_feature", "mse", "--d_standardize"], True),
         "unlabeled_no_pseudo": main(None, ["--no-d_kl"], False)}
torch.save(cases, sys.argv[1])
