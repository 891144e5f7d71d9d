"""--t_val end to end (the teacher is measured on a loader built from the data dict), and the per-epoch
validation in results.csv agreeing with the final validation of best.pt."""
import csv

import pytest
import torch

import train
import train_distillation
from conftest import tiny_train_args
from models.checkpoint import model_checkpoint_fields, save_checkpoint
from models.yolo import Model
from distill.teacher_check import best_map_from_results
from utils.cli import UserError
from utils.logging import METRIC_KEYS, VAL_LOSS_KEYS


@pytest.fixture(scope="module")
def teacher_pt(tmp_path_factory):
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=8)
    model.names = [f"c{i}" for i in range(8)]
    path = tmp_path_factory.mktemp("teacher") / "teacher_n.pt"
    save_checkpoint(path, model_checkpoint_fields(model))
    return path


def run_distill(data, project, teacher, extra=()):
    args = tiny_train_args(data, project, "kd", epochs=1, extra=["--t_weights", str(teacher), *extra])
    return train_distillation.main(train.parse_opt(args, parser=train_distillation.build_parser()))


def test_t_val_measures_teacher_and_final_matches_last_epoch(tiny_data, tmp_path, teacher_pt, capsys):
    results = run_distill(tiny_data, tmp_path, teacher_pt, extra=["--t_val"])
    out = capsys.readouterr().out
    assert f"Teacher {teacher_pt}: mAP@0.5 " in out and "give --t_val a baseline" in out
    with open(tmp_path / "kd" / "results.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    # one epoch: best.pt is the last EMA; the per-epoch figure (no NMS time limit any more) and the
    # final validation of best.pt must be the same numbers, losses included
    per_epoch = [float(last[k]) for k in METRIC_KEYS + VAL_LOSS_KEYS]
    assert all(v > 0 for v in per_epoch[4:])
    assert per_epoch == pytest.approx(list(results), rel=1e-4, abs=1e-6)


def test_t_val_against_baseline_results_csv(tiny_data, tmp_path, teacher_pt, capsys):
    baseline = tmp_path / "results.csv"
    baseline.write_text("epoch,metrics/mAP_0.5:0.95\n0,0.5\n1,0.9\n")
    run_distill(tiny_data, tmp_path, teacher_pt, extra=["--t_val", str(baseline), "--noval"])
    out = capsys.readouterr().out
    assert "is not clearly better than the best mAP@0.5:0.95 of the baseline" in out and "(0.9000)" in out


def test_a_seg_pair_is_judged_on_masks(tiny_seg_data, tmp_path, capsys):
    """--t_val for a -seg student and teacher scores the teacher's masks and reads the baseline's (M) column."""
    from types import SimpleNamespace

    from distill.teacher_check import warn_if_teacher_not_better
    from utils.dataset_yaml import check_dataset
    from utils.synthetic import CLASS_NAMES
    torch.manual_seed(0)
    teacher = Model("yolov5n-seg.yaml", nc=len(CLASS_NAMES)).eval()
    teacher.names, teacher.source = list(CLASS_NAMES), "seg_teacher.pt"
    baseline = tmp_path / "results.csv"
    baseline.write_text("epoch,metrics/mAP_0.5:0.95(B),metrics/mAP_0.5:0.95(M)\n0,0.2,0.7\n1,0.3,0.8\n")
    opt = SimpleNamespace(t_val=str(baseline), imgsz=64, batch_size=4, single_cls=False, workers=0,
                          no_overlap=False, mask_ratio=4)
    warn_if_teacher_not_better([teacher], check_dataset(str(tiny_seg_data)), opt, student_task="segment")
    out = capsys.readouterr().out
    assert "Teacher seg_teacher.pt: mask mAP@0.5 " in out
    assert "best mask mAP@0.5:0.95 of the baseline" in out and "(0.8000)" in out
    with pytest.raises(UserError, match="holds no metrics/mAP_0.5:0.95"):
        best_map_from_results(write(tmp_path / "empty.csv", "epoch,x\n0,1\n"), masks=True)


def write(path, text):
    path.write_text(text)
    return path
