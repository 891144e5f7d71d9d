"""train_distillation.py end to end: the teacher stays frozen, mismatches are refused, terms are logged."""
import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
import train_distillation
from conftest import run_cut_after_first_epoch, tiny_train_args
from distill_steps import run_accumulated, run_steps
from distill.builder import DistillationBuilder
from distill.teacher import run_teacher
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distill_args(data, project, name, teacher, epochs=2, extra=()):
    return tiny_train_args(data, project, name, epochs=epochs, extra=["--t_weights", str(teacher), *extra])


def run_distill(args, keep=None):
    """Run train_distillation.py's main, keeping a handle on the DistillationObjective it builds."""
    class KeepingBuilder(DistillationBuilder):
        def build(self, *a, **k):
            objective = super().build(*a, **k)
            if keep is not None:
                keep.append(objective)
            return objective
    parser = train_distillation.build_parser()
    opt = train.parse_opt(args, parser=parser)
    train_distillation.check_distillation_flags(opt)
    return train.main(opt, KeepingBuilder, parser=parser)


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


def test_pretrained_student_adopts_the_teachers_anchors(tiny_data, tmp_path, capsys):
    anchors = [[12, 16, 19, 36, 40, 28], [36, 75, 76, 55, 72, 146], [142, 110, 192, 243, 459, 401]]
    teacher = save_teacher(tmp_path / "anchors.pt", cfg="yolov5n.yaml", anchors=anchors)
    student = save_teacher(tmp_path / "student.pt", cfg="yolov5n.yaml", seed=2)  # the YAML's anchors
    args = distill_args(tiny_data, tmp_path, "kd", teacher, epochs=1)
    args[args.index("--cfg"):args.index("--cfg") + 2] = ["--weights", str(student)]
    run_distill(args)
    out = capsys.readouterr().out
    assert "AutoAnchor: skipped" in out and "Student anchors set to" in out
    saved = torch.load(tmp_path / "kd" / "weights" / "last.pt", weights_only=True)["model"]
    key = next(k for k in saved if k.endswith("anchors"))
    assert torch.allclose(saved[key], load_teacher(teacher).model[-1].anchors.float())


def test_other_levels_refused_and_names_warned(capsys):
    student = Model("yolov5n.yaml", nc=NC)
    other_anchors = Model("yolov5n.yaml", nc=NC, anchors=[[10, 13, 16, 30, 33, 23]] * 3)
    check_compatible(student, other_anchors)  # anchors are adopted, not refused
    wider = Model("yolov5n.yaml", nc=NC, anchors=4)  # 4 anchors per level
    with pytest.raises(TeacherMismatchError, match="3 x 3"):
        check_compatible(student, wider)
    teacher = Model("yolov5n.yaml", nc=NC)
    student.names, teacher.names = [f"a{i}" for i in range(NC)], [f"b{i}" for i in range(NC)]
    capsys.readouterr()
    check_compatible(student, teacher)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "'a0'" in out and "'b0'" in out


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


def test_two_teachers_of_different_widths_with_features_under_average(tiny_data, tmp_path, teacher_pt):
    second = save_teacher(tmp_path / "teacher_n.pt", cfg="yolov5n.yaml", seed=1)
    kept = []
    run_distill(distill_args(tiny_data, tmp_path, "multi", teacher_pt, epochs=1, extra=["--d_feature", "cwd"])
                + ["--t_weights", str(teacher_pt), str(second)], keep=kept)
    assert len(kept[0].teachers) == 2
    assert len(kept[0].feature_terms) == 2  # one adapter set per teacher width
    assert kept[0].output_terms["output"].mode == "average"
    assert (tmp_path / "multi" / "weights" / "last.pt").exists()


def test_feature_layers_tap_the_same_indices_in_the_teacher(tiny_data, tmp_path, teacher_pt):
    kept = []
    run_distill(distill_args(tiny_data, tmp_path, "taps", teacher_pt, epochs=1,
                             extra=["--d_feature", "mse", "--d_feature_layers", "4", "6", "9"]), keep=kept)
    assert kept[0].feature_layers == (4, 6, 9) and kept[0].teacher_layers == [[4, 6, 9]]
    with pytest.raises(TeacherMismatchError, match="--t_feature_layers"):  # strides 4/8/16 vs 8/16/32
        run_distill(distill_args(tiny_data, tmp_path, "bad", teacher_pt, epochs=1,
                                 extra=["--d_feature", "mse", "--d_feature_layers", "4", "6", "9",
                                        "--t_feature_layers", "2", "4", "6"]))
    assert not (tmp_path / "bad" / "results.csv").exists()


def test_progress_header_has_distillation_columns_from_epoch_0(tiny_data, tmp_path, teacher_pt, capsys):
    run_distill(distill_args(tiny_data, tmp_path, "hdr", teacher_pt, epochs=1))  # the defaults: output + KL
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "box_loss" in line)  # epoch 0's, before any batch
    assert "dist_box" in header and "kd_cls" in header


def test_kl_is_on_by_default_and_off_with_no_d_kl(tiny_data, tmp_path, teacher_pt):
    kept = []
    run_distill(distill_args(tiny_data, tmp_path, "out_only", teacher_pt, epochs=1, extra=["--no-d_kl"]), keep=kept)
    assert list(kept[0].output_terms) == ["output"]
    assert "train/kd_cls" not in header(tmp_path / "out_only" / "results.csv")
    parser = train_distillation.build_parser()
    assert parser.parse_args([]).d_kl and parser.parse_args([]).d_output


def test_teacher_gives_raw_levels_without_decoding(teacher_pt, monkeypatch):
    from models.yolo import Detect
    teacher = load_teacher(teacher_pt, device="cpu")
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        _, expected = teacher(x)  # eval forward: decoded boxes and raw levels
    monkeypatch.setattr(Detect, "_decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded")))
    out = run_teacher(teacher, x, [17, 20, 23])
    raw, feats = out.preds, out.features
    assert all(torch.equal(r, e) for r, e in zip(raw, expected)) and len(feats) == 3
    assert not teacher.training and not teacher.model[-1].training
    assert all(torch.equal(state[k], v) for k, v in teacher.state_dict().items())  # BN stats untouched
    half = load_teacher(teacher_pt, device="cpu", half=True)
    assert run_teacher(half, x).preds[0].dtype == torch.float16  # upcast later, per level


def test_distillation_strength_is_per_image_at_any_batch_size(teacher_pt):
    # same 4 images repeated 2x or 8x: the per-image content is identical, only the batch grows
    small, large = run_steps(teacher_pt, 8), run_steps(teacher_pt, 32)
    assert large["det_norm"] == pytest.approx(4 * small["det_norm"], rel=1e-4)  # YOLOv5: loss x batch
    assert large["ratio"] == pytest.approx(small["ratio"], rel=1e-4) and small["ratio"] > 0.01


def test_two_gloo_ranks_match_one_process_and_share_adapters(teacher_pt, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(Path(__file__).parent / "distill_steps.py"), str(tmp_path), str(teacher_pt), "8"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = run_steps(teacher_pt, 8)  # the same global batch in one process
    for r in ranks:
        assert r["ratio"] == pytest.approx(single["ratio"], rel=1e-4)
        assert r["det_norm"] == pytest.approx(single["det_norm"], rel=1e-4)
        for g, g1 in zip(r["adapter_grad"], single["adapter_grad"]):  # averaged, not WORLD_SIZE x
            assert torch.allclose(g, g1, rtol=1e-4, atol=1e-7)
    for k, v in single["adapters"].items():  # after 2 steps: identical on both ranks, as one process
        assert torch.equal(ranks[0]["adapters"][k], ranks[1]["adapters"][k]), k
        assert torch.allclose(ranks[0]["adapters"][k], v, rtol=1e-4, atol=1e-6), k
    # accumulation 4: the micro-steps that only accumulate launch no collective; the stepping one launches
    # one bucketed all-reduce for the adapters (DDP), not one per tensor per micro-step
    accumulated = run_accumulated(teacher_pt, 8)
    for r in ranks:
        counts = r["accumulated"]["collectives"]
        assert counts[:3] == [{"student": 0, "objective": 0}] * 3, counts
        assert counts[3]["objective"] == 1 and counts[3]["student"] >= 1, counts
        for i, (u, u1) in enumerate(zip(r["accumulated"]["updates"], accumulated["updates"])):
            # the step moves every student and adapter tensor as one process does (float summation order aside)
            assert (u - u1).norm() <= 1e-3 * u1.norm() + 1e-9, i


def test_resume_restores_adapters_and_teacher_settings(tiny_data, tmp_path, teacher_pt, monkeypatch):
    extra = ["--d_feature", "mse", "--d_weight", "3", "--batch-size", "4"]
    run_distill(distill_args(tiny_data, tmp_path, "full", teacher_pt, epochs=2, extra=extra))
    run_cut_after_first_epoch(monkeypatch, run_distill, distill_args(tiny_data, tmp_path, "cut", teacher_pt, epochs=2,
                                                                     extra=extra))
    last = tmp_path / "cut" / "weights" / "last.pt"

    from utils.cli import UserError
    with pytest.raises(UserError, match="train_distillation.py --resume"):
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


def test_feature_only_distillation_keeps_the_students_anchors_and_autoanchor(tiny_data, tmp_path, capsys):
    """Issue 27 defect 5: it printed that the student takes the teacher's anchors, and did not take them."""
    anchors = [[12, 16, 19, 36, 40, 28], [36, 75, 76, 55, 72, 146], [142, 110, 192, 243, 459, 401]]
    teacher = save_teacher(tmp_path / "anchors.pt", cfg="yolov5n.yaml", anchors=anchors)
    args = distill_args(tiny_data, tmp_path, "feat_only", teacher, epochs=1,
                        extra=["--no-d_output", "--no-d_kl", "--d_feature", "mse", "--noautoanchor"])
    run_distill(args)
    out = capsys.readouterr().out
    assert "takes its teacher's anchors" not in out and "Student anchors set to" not in out
    saved = torch.load(tmp_path / "feat_only" / "weights" / "last.pt", weights_only=True)["model"]
    key = next(k for k in saved if k.endswith("anchors"))
    assert torch.allclose(saved[key], Model("yolov5n.yaml", nc=NC).model[-1].anchors)  # the YAML's, untouched
    assert not torch.allclose(saved[key], load_teacher(teacher).model[-1].anchors.float())
    run_distill(distill_args(tiny_data, tmp_path, "feat_aa", teacher, epochs=1,
                             extra=["--no-d_output", "--no-d_kl", "--d_feature", "mse"]))
    assert "AutoAnchor: skipped" not in capsys.readouterr().out  # AutoAnchor checks the student as in train.py


def test_t_val_runs_once_on_the_main_process_and_not_on_resume(teacher_pt, monkeypatch):
    import distill.builder as builder_module
    import distill.teacher_check as teacher_check
    calls = []
    monkeypatch.setattr(teacher_check, "warn_if_teacher_not_better", lambda *a: calls.append(a))
    opt = train_distillation.build_parser().parse_args(["--t_weights", str(teacher_pt), "--t_val"])
    student = Model("yolov5n.yaml", nc=NC)
    for resuming, rank, expected in ((True, -1, 0), (False, 1, 0), (False, 0, 1), (False, -1, 2)):
        monkeypatch.setattr(builder_module, "RANK", rank)
        DistillationBuilder(opt).prepare_student(student, {}, "cpu", resuming=resuming)
        assert len(calls) == expected, (resuming, rank)
