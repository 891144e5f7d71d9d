"""train_distillation.py end to end: the teacher stays frozen, mismatches are refused, terms are logged."""
import csv

import pytest
import torch

import train
import train_distillation
from conftest import tiny_train_args
from distill import distiller as distiller_module
from distill.teacher import TeacherMismatchError, check_compatible, load_teacher
from models.checkpoint import model_checkpoint_fields, save_checkpoint
from models.yolo import Model

NC = 8  # classes of the synthetic set


def save_teacher(path, cfg="yolov5s.yaml", nc=NC, anchors=None, seed=0):
    torch.manual_seed(seed)
    model = Model(cfg, nc=nc, anchors=anchors)
    model.names = [f"c{i}" for i in range(nc)]
    save_checkpoint(path, model_checkpoint_fields(model))
    return path


@pytest.fixture(scope="module")
def teacher_pt(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher_s.pt")


def distill_args(data, project, name, teacher, epochs=2, extra=()):
    return tiny_train_args(data, project, name, epochs=epochs, extra=["--t_weights", str(teacher), *extra])


def run_distill(args, keep=None):
    """Run train_distillation.main, keeping a handle on the Distiller it builds."""
    def factory(*a):
        d = distiller_module.build_distiller(*a)
        if keep is not None:
            keep.append(d)
        return d
    opt = train.parse_opt(args, parser=train_distillation.build_parser())
    return train.main(opt, extra_loss_factory=factory)


def header(csv_path):
    with open(csv_path, newline="") as f:
        return next(csv.reader(f))


def test_teacher_frozen_bit_identical_and_gradient_free(tiny_data, tmp_path, teacher_pt):
    before = torch.load(teacher_pt, weights_only=True)["model"]
    kept = []
    run_distill(distill_args(tiny_data, tmp_path, "kd", teacher_pt), keep=kept)
    teacher = kept[0].teachers[0]
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    # the teacher was fused for speed: compare its outputs with a fresh unfused load instead of keys
    fresh = load_teacher(teacher_pt, device="cpu")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(teacher(x)[0], fresh(x)[0])
    after = torch.load(teacher_pt, weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    cols = header(tmp_path / "kd" / "results.csv")
    for name in ("train/dist_box", "train/dist_obj", "train/dist_cls"):
        assert name in cols
    saved = torch.load(tmp_path / "kd" / "weights" / "last.pt", weights_only=True)
    assert saved["opt"]["t_weights"] == [str(teacher_pt)]


def test_other_nc_refused_before_first_batch(tiny_data, tmp_path):
    bad = save_teacher(tmp_path / "nc3.pt", cfg="yolov5n.yaml", nc=3)
    with pytest.raises(TeacherMismatchError, match="nc=3"):
        run_distill(distill_args(tiny_data, tmp_path, "kd", bad))
    assert not (tmp_path / "kd" / "results.csv").exists()  # refused before any epoch ran


def test_other_anchors_refused(tiny_data, tmp_path):
    anchors = [[12, 16, 19, 36, 40, 28], [36, 75, 76, 55, 72, 146], [142, 110, 192, 243, 459, 401]]
    bad = save_teacher(tmp_path / "anchors.pt", cfg="yolov5n.yaml", anchors=anchors)
    with pytest.raises(TeacherMismatchError, match="anchors"):
        run_distill(distill_args(tiny_data, tmp_path, "kd", bad, extra=["--noautoanchor"]))


def test_check_compatible_accepts_same_head():
    check_compatible(Model("yolov5n.yaml", nc=NC), Model("yolov5s.yaml", nc=NC))


def test_feature_and_kl_terms_logged_and_adapters_not_in_student(tiny_data, tmp_path, teacher_pt):
    args = distill_args(tiny_data, tmp_path, "feat", teacher_pt, epochs=1,
                        extra=["--d_feature", "cwd", "--d_standardize", "--d_kl"])
    run_distill(args)
    cols = header(tmp_path / "feat" / "results.csv")
    assert {"train/feat", "train/kd_cls", "train/dist_box"} <= set(cols)
    ckpt = torch.load(tmp_path / "feat" / "weights" / "last.pt", weights_only=True)
    assert not any("adapter" in k for k in ckpt["model"])
    assert any("adapters" in k for k in ckpt["extra"])  # kept for --resume only


def test_two_teachers(tiny_data, tmp_path, teacher_pt):
    second = save_teacher(tmp_path / "teacher_n.pt", cfg="yolov5n.yaml", seed=1)
    kept = []
    run_distill(distill_args(tiny_data, tmp_path, "multi", teacher_pt, epochs=1,
                             extra=["--d_multi", "sum", "--d_feature", "mse"]) + ["--t_weights", str(teacher_pt), str(second)],
                keep=kept)
    assert len(kept[0].teachers) == 2
    assert len(kept[0].feature_terms) == 2  # one adapter set per teacher width


class Interrupted(Exception):
    pass


def test_resume_restores_adapters_and_teacher_settings(tiny_data, tmp_path, teacher_pt, monkeypatch):
    from utils.trainer import Trainer
    extra = ["--d_feature", "mse", "--d_weight", "3", "--batch-size", "4"]
    run_distill(distill_args(tiny_data, tmp_path, "full", teacher_pt, epochs=2, extra=extra))

    save = Trainer._save

    def save_then_crash(self, epoch, fi):
        save(self, epoch, fi)
        if epoch == 0:
            raise Interrupted  # as if the machine died right after the first epoch's checkpoint
    monkeypatch.setattr(Trainer, "_save", save_then_crash)
    with pytest.raises(Interrupted):
        run_distill(distill_args(tiny_data, tmp_path, "cut", teacher_pt, epochs=2, extra=extra))
    monkeypatch.setattr(Trainer, "_save", save)
    last = tmp_path / "cut" / "weights" / "last.pt"

    with pytest.raises(SystemExit, match="train_distillation.py --resume"):
        train.main(train.parse_opt(["--resume", str(last)]))  # plain train.py would drop the teacher
    kept = []
    run_distill(["--resume", str(last), "--device", "cpu"], keep=kept)
    assert kept[0].output_terms["output"].method.d_weight == 3.0  # teacher settings come from last.pt
    full = torch.load(tmp_path / "full" / "weights" / "last.pt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == 1
    for key in ("train_model", "extra"):  # student weights and feature adapters
        assert full[key].keys() == resumed[key].keys()
        assert all(torch.equal(full[key][k], resumed[key][k]) for k in full[key]), key
