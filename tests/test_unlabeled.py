"""Unlabeled images in a distillation run (--d_unlabeled, `unlabeled:`, --d_pseudo)."""
import csv
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import train
import train_distillation
from conftest import tiny_train_args
from distill.pseudo import pseudo_targets
from models.yolo import Model
from utils.dataset_yaml import check_dataset
from utils.datasets import LoadImagesAndLabels
from utils.label_cache import DatasetError
from utils.loss import ComputeLoss

ROOT = Path(__file__).resolve().parents[1]
HYP = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0)


@pytest.fixture(scope="module")
def pools(tiny_data, tmp_path_factory):
    """(labelled image folder, unlabeled folder): the tiny set's val images, with a label file beside
    them whose class id is far beyond nc, to prove unlabeled images' labels are never read."""
    d = check_dataset(tiny_data)
    root = tmp_path_factory.mktemp("pools")
    unl = root / "images" / "unl"
    shutil.copytree(d["val"], unl)
    (root / "labels" / "unl").mkdir(parents=True)
    for im in unl.iterdir():
        (root / "labels" / "unl" / (im.stem + ".txt")).write_text("99 0.5 0.5 0.1 0.1\n")
    return d["train"], str(unl)


def test_unlabeled_images_are_flagged_and_counted_apart(pools, caplog):
    train_dir, unl = pools
    caplog.set_level("INFO", logger="yolov5")
    ds = LoadImagesAndLabels(train_dir, 64, 8, augment=True, prefix="train: ", nc=8, unlabeled=unl)
    n_unl = len(list(Path(unl).iterdir()))
    assert ds.n_unlabeled == n_unl and ds.n == 16 + n_unl
    assert all(len(ds.labels[i]) == 0 for i in np.flatnonzero(ds.is_unlabeled))
    assert ds.unlabeled_files == {ds.im_files[i] for i in np.flatnonzero(ds.is_unlabeled)}
    assert f"unlabeled: Scanned unlabeled images in {unl}: {n_unl} usable, 0 corrupt" in caplog.text
    assert "16 found, 0 missing" in caplog.text  # unlabeled images are not "missing labels"


def test_mosaics_never_mix_labelled_and_unlabeled_images(pools):
    train_dir, unl = pools
    ds = LoadImagesAndLabels(train_dir, 64, 8, augment=True, nc=8, unlabeled=unl)
    rng = np.random.default_rng(0)
    for index in range(ds.n):
        partners = [ds._random_index(rng, like=index) for _ in range(20)]
        assert {bool(ds.is_unlabeled[p]) for p in partners} == {bool(ds.is_unlabeled[index])}
    for index in np.flatnonzero(ds.is_unlabeled):
        for epoch in range(3):  # mosaic, mixup and copy-paste draw partners: still no boxes
            _, labels, path, _ = ds[(int(index), epoch, True)]
            assert len(labels) == 0 and path in ds.unlabeled_files


def test_without_unlabeled_images_the_augmentation_draws_are_unchanged(pools):
    train_dir, _ = pools
    ds = LoadImagesAndLabels(train_dir, 64, 8, augment=True, nc=8)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [ds._random_index(a, like=2) for _ in range(10)] == [int(b.integers(ds.n)) for _ in range(10)]


def test_bad_unlabeled_sources_name_the_problem(pools, tmp_path):
    train_dir, unl = pools
    with pytest.raises(FileNotFoundError, match="unlabeled: .*nowhere does not exist"):
        LoadImagesAndLabels(train_dir, 64, 8, nc=8, prefix="train: ", unlabeled=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="unlabeled: No images found"):
        LoadImagesAndLabels(train_dir, 64, 8, nc=8, prefix="train: ", unlabeled=str(tmp_path / "empty"))
    mixed = tmp_path / "mixed"
    shutil.copytree(unl, mixed)
    (mixed / "broken.jpg").write_bytes(b"not an image")
    ds = LoadImagesAndLabels(train_dir, 64, 8, nc=8, unlabeled=str(mixed))
    assert ds.n_unlabeled == len(list(Path(unl).iterdir()))  # the corrupt one is reported and skipped
    assert not any("broken" in f for f in ds.im_files)


def loss_setup(seed=0):
    torch.manual_seed(seed)
    model = Model("yolov5n.yaml", nc=3)
    model.hyp = dict(HYP)
    preds = [p.detach().requires_grad_() for p in model(torch.rand(4, 3, 64, 64))]
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [2, 0, 0.3, 0.6, 0.2, 0.2], [2, 2, 0.7, 0.2, 0.4, 0.3]])
    return ComputeLoss(model), preds, targets


def test_detection_loss_reads_only_labelled_images():
    compute, preds, targets = loss_setup()
    labelled = torch.tensor([True, False, True, False])
    loss, items = compute(preds, targets, labelled)
    # the same loss as a batch of the labelled images alone (targets re-indexed)
    sub_targets = targets.clone()
    sub_targets[:, 0] = torch.tensor([0.0, 1.0, 1.0])
    sub_loss, sub_items = compute([p[labelled] for p in preds], sub_targets)
    assert torch.allclose(loss, sub_loss, rtol=1e-6) and torch.allclose(items, sub_items, rtol=1e-6)
    loss.backward()
    for p in preds:  # no gradient reaches the unlabeled images' predictions
        assert p.grad[~labelled].abs().sum() == 0 and p.grad[labelled].abs().sum() > 0


def test_a_batch_without_labelled_images_gives_a_zero_detection_loss():
    compute, preds, _ = loss_setup()
    loss, items = compute(preds, torch.zeros((0, 6)), torch.zeros(4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and items.abs().sum() == 0 and all(p.grad.abs().sum() == 0 for p in preds)


def test_pseudo_targets_are_the_teachers_detections_in_label_units():
    torch.manual_seed(0)
    teacher = Model("yolov5n.yaml", nc=3).eval()
    with torch.no_grad():
        decoded, raw = teacher(torch.rand(3, 3, 64, 96))
    assert torch.allclose(teacher.model[-1].decode(raw), decoded, atol=1e-5)
    from utils.boxes import non_max_suppression
    conf = float(decoded[2, :, 4].max() * decoded[2, :, 5:].max(-1)[0].max()) * 0.5  # some boxes pass
    t = pseudo_targets(teacher.model[-1], raw, torch.tensor([2]), (64, 96), conf)
    expected = non_max_suppression(decoded[2:3], conf, 0.45)[0]
    assert len(t) == len(expected) > 0 and (t[:, 0] == 2).all()
    assert torch.equal(t[:, 1], expected[:, 5])
    assert (t[:, 2:] >= 0).all() and (t[:, 2:] <= 1).all()
    x1 = (t[:, 2] - t[:, 4] / 2) * 96
    assert torch.allclose(x1, expected[:, 0].clamp(min=0), atol=1e-3)


def test_pseudo_labels_of_several_teachers_come_from_their_averaged_outputs():
    """--d_pseudo with two teachers: one set of boxes per unlabeled image, from both teachers' mean output
    (the same mean the output term distils toward), never boxes for labelled images."""
    from distill.objective import DistillationObjective
    from distill.teacher import run_teacher
    from utils.objective import Batch
    torch.manual_seed(0)
    t1, t2 = (Model("yolov5n.yaml", nc=3).eval() for _ in range(2))
    imgs = torch.rand(3, 3, 64, 64)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.2]])
    labelled = torch.tensor([True, False, False])

    def labels_from(teachers, conf):
        task = SimpleNamespace(item_names=())  # only the pseudo-labelling step runs here
        objective = DistillationObjective(task, teachers, output_terms={"output": None}, pseudo_conf=conf)
        outs = [run_teacher(t, imgs) for t in teachers]
        batch, per_image = objective._pseudo_labelled(Batch(imgs, targets, labelled), outs)
        assert batch.labelled.all() and torch.equal(batch.targets[:1], targets)
        assert per_image.item() == (len(batch.targets) - 1) / 2
        return batch.targets[1:]

    with torch.no_grad():
        raw = [Model.forward(t, imgs)[1] for t in (t1, t2)]
    mean = [(a + b) / 2 for a, b in zip(*raw)]
    decoded = t1.model[-1].decode(mean)
    conf = float((decoded[1:, :, 4:5] * decoded[1:, :, 5:]).max()) * 0.5  # some boxes pass
    both = labels_from([t1, t2], conf)
    assert len(both) > 0 and set(both[:, 0].tolist()) <= {1.0, 2.0}
    assert torch.allclose(both, pseudo_targets(t1.model[-1], mean, torch.tensor([1, 2]), (64, 64), conf))
    assert torch.equal(labels_from([t1, t1], conf), labels_from([t1], conf))  # a repeated teacher changes nothing
    assert not torch.equal(both, labels_from([t1], conf))  # and the second teacher is not ignored


def read_rows(csv_path):
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def run_distill(args):
    opt = train.parse_opt(args, parser=train_distillation.build_parser())
    return train_distillation.main(opt)


def test_distillation_uses_unlabeled_images_and_logs_counts(tiny_data, pools, tmp_path, capsys):
    _, unl = pools
    args = tiny_train_args(tiny_data, tmp_path, "unl", epochs=1,
                           extra=["--d_unlabeled", unl, "--d_pseudo", "0.01", "--noval"])
    run_distill(args)
    out = capsys.readouterr().out
    assert "Labelled  Unlabeled" in out
    row = read_rows(tmp_path / "unl" / "results.csv")[0]
    assert (float(row["train/labelled_imgs"]), float(row["train/unlabeled_imgs"])) == (16, 8)
    assert "train/pseudo" in row and float(row["train/dist_obj"]) > 0


def test_dataset_yaml_unlabeled_entry_and_plain_training_ignores_it(tiny_data, pools, tmp_path, capsys):
    _, unl = pools
    cfg = yaml.safe_load(Path(tiny_data).read_text())
    cfg["unlabeled"] = unl
    data = tmp_path / "with_unl.yaml"
    data.write_text(yaml.safe_dump(cfg))
    run_distill(tiny_train_args(data, tmp_path, "yaml", epochs=1, extra=["--noval"]))
    assert float(read_rows(tmp_path / "yaml" / "results.csv")[0]["train/unlabeled_imgs"]) == 8
    run_distill(tiny_train_args(data, tmp_path, "off", epochs=1, extra=["--noval", "--d_unlabeled", ""]))
    assert "train/unlabeled_imgs" not in read_rows(tmp_path / "off" / "results.csv")[0]
    train.main(train.parse_opt(tiny_train_args(data, tmp_path, "plain", epochs=1, extra=["--noval"])))
    assert "not used (the detection loss needs labels" in capsys.readouterr().out
    assert "train/unlabeled_imgs" not in read_rows(tmp_path / "plain" / "results.csv")[0]


@pytest.mark.parametrize("flags, message", [
    (["--d_pseudo", "2"], "ERROR: --d_pseudo 2.0: must be a confidence in (0, 1]"),
    (["--d_unlabeled", "no_such_folder"], "ERROR: unlabeled: no_such_folder does not exist"),
])
def test_bad_unlabeled_flags_print_one_line(tiny_data, tmp_path, flags, message):
    args = tiny_train_args(tiny_data, tmp_path, "bad", epochs=1, extra=flags)
    r = subprocess.run([sys.executable, "train_distillation.py", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith(message), r.stderr
    assert not (tmp_path / "bad").exists()
