"""The training objective (utils/objective.py, distill/objective.py) against the code it replaced, and its defects.

tests/data/objective_golden.pt holds the loss items and gradient summaries that the previous trainer step
(Trainer._train_step calling the Distiller's two hooks) produced at commit 6ac651f for three batches; the
script that wrote it is tests/data/make_objective_golden.py in commit 310e255.
"""
import sys
from argparse import Namespace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import train_distillation
from distill.builder import DistillationBuilder
from distill.teacher import load_teacher, run_teacher
from models.yolo import Model
from utils.augment import letterbox
from utils.files import yaml_load
from utils.loss import ComputeLoss
from utils.objective import Batch, DetectionObjective
from utils.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "objective_golden.pt"
DEMO_TEACHER = ROOT / "weights" / "demo_teacher_yolov5s.pt"
NC, IMGSZ = 8, 128


def golden_batch():
    """The two sample images letterboxed to 128 px, then their mirrored copies as unlabeled images."""
    ims = []
    for name in ("shapes1.jpg", "shapes2.jpg"):
        im = letterbox(cv2.imread(str(ROOT / "data" / "images" / name)), IMGSZ, auto=False)[0]
        ims.append(torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)[::-1])))
    imgs = torch.stack(ims + [im.flip(-1) for im in ims]).float() / 255
    targets = torch.tensor([[0, 1, 0.3, 0.4, 0.2, 0.3], [0, 4, 0.7, 0.6, 0.25, 0.2], [1, 2, 0.5, 0.5, 0.4, 0.4]])
    return imgs, targets, torch.tensor([True, True, False, False])


def distillation_trainer(flags):
    """A Trainer with a yolov5n student and the demo teacher, built in Trainer._setup's order."""
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=NC)
    hyp = yaml_load(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")
    hyp["cls"] *= NC / 80
    hyp["obj"] *= (IMGSZ / 640) ** 2
    hyp["label_smoothing"] = 0.0
    model.hyp, model.names = hyp, [f"c{i}" for i in range(NC)]
    opt = train_distillation.build_parser().parse_args(["--t_weights", str(DEMO_TEACHER), *flags])
    builder = DistillationBuilder(opt)
    trainer = Trainer(Namespace(save_dir="unused"), builder)
    trainer.device, trainer.cuda, trainer.model = torch.device("cpu"), False, model
    torch.manual_seed(100)  # teachers, then adapters drawn from this seed, as when the golden values were written
    builder.prepare_student(model, None, trainer.device, resuming=False)
    trainer.objective = builder.build(DetectionObjective(ComputeLoss(model)), model, hyp, unlabeled_images=2)
    trainer.scaler, trainer.amp_dtype = torch.amp.GradScaler("cuda", enabled=False), None
    trainer.forward = model
    return trainer


def grad_summary(named_grads, g):
    """Per tensor: the gradient's norm and its projection on a random direction drawn from `g`."""
    return {n: torch.stack([v.norm(), (v * torch.randn(v.shape, generator=g)).sum()]) for n, v in named_grads}


@pytest.mark.parametrize("case", ["pseudo_cwd", "fork_units_mse", "unlabeled_no_pseudo"])
def test_loss_and_gradients_equal_the_previous_trainer_step(case):
    golden = torch.load(GOLDEN, weights_only=True)[case]
    trainer = distillation_trainer(golden["flags"])
    imgs, targets, labelled = golden_batch()
    trainer.model.train()
    items = trainer._train_step(Batch(imgs, targets, None if golden["all_labelled"] else labelled))
    assert list(trainer.objective.item_names) == list(golden["items"])
    assert items.tolist() == pytest.approx(list(golden["items"].values()), rel=1e-5, abs=1e-8)
    g = torch.Generator().manual_seed(1)  # one stream, student first, as the golden script drew it
    student = grad_summary(((n, p.grad) for n, p in trainer.model.named_parameters() if p.grad is not None), g)
    adapters = grad_summary(((n, p.grad) for n, p in trainer.objective.named_parameters() if p.grad is not None), g)
    for got, want in ((student, golden["grads"]), (adapters, golden["adapter_grads"])):
        assert got.keys() == want.keys()
        for name in want:
            assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-9), name


def test_teacher_runs_outside_the_students_autocast():
    """Defect 1: under the student's (CPU bf16) autocast the float teacher computed in bf16."""
    teacher = load_teacher(DEMO_TEACHER, device="cpu")
    x = torch.rand(2, 3, 64, 64)
    plain = run_teacher(teacher, x).preds
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = run_teacher(teacher, x).preds
    assert all(level.dtype == torch.float32 for level in inside)
    assert all(torch.equal(a, b) for a, b in zip(plain, inside))


def test_each_teacher_runs_once_per_batch_with_pseudo_labels(monkeypatch):
    """The pseudo-labels and the terms read one teacher pass (no cache keyed on tensor identity)."""
    trainer = distillation_trainer(["--d_feature", "cwd", "--d_pseudo", "0.25"])
    teacher = trainer.objective.teachers[0]
    calls = []
    original = type(teacher).forward
    monkeypatch.setattr(type(teacher), "forward",
                        lambda self, *a, **k: calls.append(self is teacher) or original(self, *a, **k))
    imgs, targets, labelled = golden_batch()
    trainer._train_step(Batch(imgs, targets, labelled))
    assert calls.count(True) == 1


def test_smart_optimizer_gives_adapter_biases_no_weight_decay():
    from utils.torch_utils import smart_optimizer
    trainer = distillation_trainer(["--d_feature", "mse"])
    adapters = trainer.objective.trainable_modules()
    opt = smart_optimizer(trainer.model, "SGD", 0.01, 0.9, 5e-4, adapters)
    biases, decayed, _ = ({id(p) for p in g["params"]} for g in opt.param_groups)
    for name, p in adapters[0].named_parameters():
        assert id(p) in (biases if name.endswith("bias") else decayed), name
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[1]["weight_decay"] == 5e-4


def test_detection_objective_is_the_detection_loss():
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=NC)
    model.hyp = yaml_load(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")
    loss_fn = ComputeLoss(model)
    imgs, targets, labelled = golden_batch()
    raw = model(imgs)
    objective = DetectionObjective(loss_fn)
    assert objective.item_names == ("box_loss", "obj_loss", "cls_loss") and objective.feature_layers == ()
    for mask in (None, labelled):
        loss, items = objective(Batch(imgs, targets, mask), raw, [])
        want, want_items = loss_fn(raw, targets, mask)
        assert torch.equal(loss, want) and torch.equal(items, want_items)


@pytest.mark.slow
def test_compiled_student_and_teacher_give_the_eager_step():
    """--compile: the student's forward/backward and the teacher's forward compiled, the same step (CPU)."""
    from utils.torch_utils import compiled
    imgs, targets, labelled = golden_batch()
    results = []
    for mode in (False, "default"):
        trainer = distillation_trainer(["--d_feature", "cwd", "--d_pseudo", "0.25"])
        trainer.forward = compiled(trainer.model, mode)
        trainer.objective.teacher_forwards = [compiled(t, mode) for t in trainer.objective.teachers]
        trainer.model.train()
        items = trainer._train_step(Batch(imgs, targets, labelled))
        grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
        results.append((items, grads))
    (eager_items, eager_grads), (items, grads) = results
    assert torch.allclose(items, eager_items, rtol=1e-4, atol=1e-6)
    assert (grads - eager_grads).norm() <= 1e-3 * eager_grads.norm()
