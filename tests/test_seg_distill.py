"""Distilling a segmentation student (issue 29): detection terms on the detection columns, mask and prototype
terms, the convex per-task mix, pseudo masks for unlabeled images, and the det/seg pairing rules."""
from pathlib import Path

import pytest
import torch

import train
import train_distillation
from conftest import run_cut_after_first_epoch
from distill.builder import DistillationBuilder
from distill.losses import DistillInputs, detection_view
from distill.pseudo import add_pseudo_masks, pseudo_masks, pseudo_targets
from distill.teacher import run_teacher
from models.checkpoint import model_checkpoint_fields, save_checkpoint
from models.yolo import Model
from utils.files import yaml_load
from utils.boxes import xywh2xyxy
from utils.masks import process_mask
from utils.objective import Batch, SegmentationObjective
from utils.seg_loss import ComputeSegLoss

NC, SIZE = 3, 64
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def seg_model(cfg="yolov5n-seg.yaml", seed=0, nc=NC):
    torch.manual_seed(seed)
    model = Model(cfg, nc=nc)
    model.names = [f"c{i}" for i in range(nc)]
    model.hyp = yaml_load(PROJECT_ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")
    return model


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg_teacher") / "teacher.pt"
    teacher = seg_model("yolov5n-seg.yaml", seed=1)
    with torch.no_grad():  # a confident teacher: every cell's objectness high and masks set, so pseudo labels exist
        for conv in teacher.model[-1].m:
            bias = conv.bias.view(teacher.model[-1].na, -1)
            bias[:, 4], bias[:, 5 + NC:] = 3.0, 1.0
    return save_checkpoint(path, model_checkpoint_fields(teacher))


def objective_for(teacher_file, flags, student=None, unlabeled=None):
    student = student or seg_model()
    opt = train_distillation.build_parser().parse_args(["--t_weights", str(teacher_file), *flags])
    builder = DistillationBuilder(opt)
    builder.prepare_student(student, {}, "cpu", resuming=False)
    task = SegmentationObjective(ComputeSegLoss(student, overlap=True))
    return builder.build(task, student, student.hyp, unlabeled_images=unlabeled), student, builder


def seg_batch(labelled=None):
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, SIZE, SIZE, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.5], [1, 2, 0.4, 0.4, 0.3, 0.3]])
    masks = torch.zeros(2, SIZE // 4, SIZE // 4)
    masks[0, 4:12, 4:12], masks[1, 4:9, 4:9] = 1, 1
    return Batch(imgs, targets, labelled, masks)


def student_step(objective, student, batch):
    student.train()
    raw, features = student(batch.imgs, feature_layers=list(objective.feature_layers))
    return objective(batch, raw, features), raw


def test_detection_terms_read_the_detection_columns_only(teacher_file):
    objective, student, _ = objective_for(teacher_file, ["--no-d_mask"])
    assert "kd_mask" not in objective.item_names and "dist_cls" in objective.item_names
    batch = seg_batch()
    (loss, items), raw = student_step(objective, student, batch)
    levels = raw[0]
    for lvl in levels:
        lvl.retain_grad()
    soft = loss - objective.task(batch, raw)[0]  # the distillation part
    soft.sum().backward()
    assert all(lvl.grad[..., 5 + NC:].abs().sum() == 0 for lvl in levels)  # coefficients are no class scores
    assert sum(lvl.grad[..., :5 + NC].abs().sum() for lvl in levels) > 0
    view = detection_view(DistillInputs(levels), NC)
    assert all(v.shape[-1] == 5 + NC for v in view.preds)


def test_mask_and_prototype_terms_have_columns_and_train_the_adapter(teacher_file):
    objective, student, _ = objective_for(teacher_file, ["--d_proto"])
    names = objective.item_names
    assert names[:4] == ("box_loss", "seg_loss", "obj_loss", "cls_loss")
    assert names.index("kd_mask") < names.index("proto")
    (loss, items), _ = student_step(objective, student, seg_batch())
    values = dict(zip(names, items.tolist()))
    assert values["kd_mask"] > 0 and values["proto"] > 0
    loss.sum().backward()
    adapter = objective.proto_terms[0].adapters[0]
    assert adapter.weight.grad.abs().sum() > 0
    assert objective.trainable_modules()[0].terms[-1] is objective.proto_terms[0]  # one module for DDP


def test_convex_mix_weighs_each_tasks_hard_and_soft_loss(teacher_file):
    flags = ["--d_proto", "--d_mix", "0.25", "0.75"]
    objective, student, _ = objective_for(teacher_file, flags)
    batch = seg_batch()
    (loss, items), raw = student_step(objective, student, batch)
    values = dict(zip(objective.item_names, items.tolist()))
    hard, _ = objective.task.task_losses(batch, raw)
    det_soft = sum(values[k] for k in ("dist_box", "dist_obj", "dist_cls", "kd_cls"))
    seg_soft = values["kd_mask"] + values["proto"]
    expected = (0.75 * hard["detect"].item() + 0.25 * det_soft * 2 +
                0.25 * hard["segment"].item() + 0.75 * seg_soft * 2)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    plain, _ = objective_for(teacher_file, ["--d_proto"])[0](batch, raw)  # added, not mixed
    assert plain.item() == pytest.approx(hard["detect"].item() + hard["segment"].item()
                                         + (det_soft + seg_soft) * 2, rel=1e-4)


def test_pseudo_masks_are_the_teachers_masks_of_its_boxes_in_the_overlap_map():
    teacher = seg_model("yolov5n-seg.yaml", seed=1).eval()
    imgs = torch.rand(2, 3, SIZE, SIZE)
    out = run_teacher(teacher, imgs)
    head = teacher.model[-1]
    decoded = head.decode([lvl.float() for lvl in out.preds])
    conf = float((decoded[1, :, 4:5] * decoded[1, :, 5:5 + NC]).max()) * 0.9  # a few boxes pass
    targets, cells = pseudo_targets(head, out.preds, torch.tensor([1]), (SIZE, SIZE), conf, with_cells=True)
    assert len(targets) > 0 and (targets[:, 0] == 1).all()
    masks = pseudo_masks([out], NC, targets, cells, (SIZE // 4, SIZE // 4))
    # the same masks as the teacher's own prediction path (coefficients of those cells, its prototypes)
    coeffs = decoded[1, cells, 5 + NC:]
    assert torch.equal(masks, process_mask(out.protos[1], coeffs, xywh2xyxy(targets[:, 2:] * SIZE), (SIZE, SIZE)))
    overlap = add_pseudo_masks(torch.zeros(2, SIZE // 4, SIZE // 4), targets, masks, overlap=True)
    assert overlap[0].abs().sum() == 0  # the labelled image keeps its (empty) map
    for j, m in enumerate(masks):  # each visible pixel holds its row's 1-based index
        assert (overlap[1][overlap[1] == j + 1] > 0).all() and ((overlap[1] == j + 1) <= m).all()
    per_row = add_pseudo_masks(torch.zeros(1, SIZE // 4, SIZE // 4), targets, masks, overlap=False)
    assert per_row.shape[0] == 1 + len(targets) and torch.equal(per_row[1:].bool(), masks)


def test_pseudo_labelled_batch_carries_targets_and_masks_for_unlabeled_images(teacher_file):
    objective, student, _ = objective_for(teacher_file, ["--d_pseudo", "0.2"], unlabeled={"u.jpg"})
    batch = seg_batch(labelled=torch.tensor([True, False]))
    batch = Batch(batch.imgs, batch.targets[:1], batch.labelled, batch.masks * torch.tensor([1.0, 0.0])[:, None, None])
    outs = [run_teacher(t, batch.imgs) for t in objective.teachers]
    relabelled, per_image = objective._pseudo_labelled(batch, outs)
    new = relabelled.targets[1:]
    assert len(new) > 0 and (new[:, 0] == 1).all() and per_image.item() == len(new)
    painted = set(relabelled.masks[1].unique().long().tolist()) - {0}
    assert relabelled.labelled.all() and painted and painted <= set(range(1, len(new) + 1))
    assert torch.equal(relabelled.masks[0], batch.masks[0])


@pytest.mark.parametrize("student_cfg, teacher_cfg, flags, message", [
    ("yolov5n-seg.yaml", "yolov5n.yaml", [], "is a detection model but the student is a segmentation model"),
    ("yolov5n-seg.yaml", "yolov5n.yaml", ["--no-d_mask", "--d_proto"], "need a -seg teacher"),
    ("yolov5n.yaml", "yolov5n-seg.yaml", ["--d_mask"], "the student is a detection model"),
])
def test_det_and_seg_pairs_are_refused_unless_only_detection_terms(tmp_path, student_cfg, teacher_cfg, flags,
                                                                   message):
    from utils.cli import UserError
    teacher = tmp_path / "t.pt"
    save_checkpoint(teacher, model_checkpoint_fields(seg_model(teacher_cfg)))
    with pytest.raises(UserError, match=message):
        objective_for(teacher, flags, student=seg_model(student_cfg))


@pytest.mark.parametrize("student_cfg, teacher_cfg, flags", [
    ("yolov5n-seg.yaml", "yolov5n.yaml", ["--no-d_mask"]),
    ("yolov5n.yaml", "yolov5n-seg.yaml", []),
])
def test_detection_terms_alone_pair_a_detection_and_a_segmentation_model(tmp_path, student_cfg, teacher_cfg, flags):
    teacher = tmp_path / "t.pt"
    save_checkpoint(teacher, model_checkpoint_fields(seg_model(teacher_cfg)))
    student = seg_model(student_cfg)
    opt = train_distillation.build_parser().parse_args(["--t_weights", str(teacher), *flags])
    DistillationBuilder(opt).prepare_student(student, {}, "cpu", resuming=False)
    assert opt.d_mask is False


def test_d_mix_values_are_checked():
    opt = train.parse_opt(["--d_mix", "0.5", "1.5"], parser=train_distillation.build_parser())
    from utils.cli import UserError
    with pytest.raises(UserError, match="--d_mix"):
        DistillationBuilder(opt)


def test_seg_distillation_run_logs_mask_terms_and_resumes_exactly(tiny_seg_data, tmp_path, monkeypatch):
    """train_distillation.py with a -seg pair as a user types it: the seg columns, the mask and prototype
    columns, and --resume continuing the run to the same weights (adapters included)."""
    from utils.synthetic import CLASS_NAMES
    teacher = seg_model(seed=1, nc=len(CLASS_NAMES))
    teacher.names = list(CLASS_NAMES)
    teacher_file = save_checkpoint(tmp_path / "teacher8.pt", model_checkpoint_fields(teacher))

    def args(name):
        return ["--data", str(tiny_seg_data), "--cfg", "yolov5n-seg.yaml", "--t_weights", str(teacher_file),
                "--d_proto", "--epochs", "2", "--imgsz", "64", "--batch-size", "8", "--workers", "0", "--device",
                "cpu", "--project", str(tmp_path), "--name", name, "--noplots", "--noval"]

    def run(argv):
        return train_distillation.main(train.parse_opt(argv, parser=train_distillation.build_parser()))

    run(args("full"))
    run_cut_after_first_epoch(monkeypatch, run, args("cut"))
    last = tmp_path / "cut" / "weights" / "last.pt"
    run(["--resume", str(last), "--device", "cpu"])
    full = torch.load(tmp_path / "full" / "weights" / "last.pt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    for key in ("train_model", "extra"):  # student weights and the prototype adapter
        assert full[key].keys() == resumed[key].keys() and len(full[key]) > 0
        assert all(torch.equal(full[key][k], resumed[key][k]) for k in full[key]), key
    with open(tmp_path / "full" / "results.csv") as f:
        header = f.readline().strip().split(",")
    assert {"train/seg_loss", "metrics/mAP_0.5:0.95(M)", "val/seg_loss", "train/kd_mask", "train/proto"} <= set(header)
