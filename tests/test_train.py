"""train.py end to end on a tiny synthetic set: run folder, results.csv, checkpoints, resume, DDP."""
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from conftest import ROOT, tiny_train_args
from distill.builder import DistillationBuilder
from utils.logging import YOLOV5_COLUMNS


def read_rows(csv_path):
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def run_train(args):
    return train.main(train.parse_opt(args))


def test_train_writes_yolov5_run_folder(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    results = run_train(tiny_train_args(tiny_data, tmp_path, "exp", epochs=2))
    run = tmp_path / "exp"
    out = capsys.readouterr().out  # paths under the working directory are printed relative, as YOLOv5 does
    assert f"Final {Path('exp/weights/best.pt')}: mAP@0.5 " in out and f"Results saved to {Path('exp')}\n" in out
    assert len(results) == 7 and all(torch.isfinite(torch.tensor(results)))
    for f in ("opt.yaml", "hyp.yaml", "results.csv", "weights/last.pt", "weights/best.pt"):
        assert (run / f).exists(), f
    rows = read_rows(run / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert list(rows[0])[:len(YOLOV5_COLUMNS)] == YOLOV5_COLUMNS
    assert all(float(r["train/box_loss"]) > 0 for r in rows)
    ckpt = torch.load(run / "weights/last.pt", weights_only=True)  # plain data only
    assert ckpt["epoch"] == 1 and ckpt["names"][0] == "disc"
    # a second run with the same name goes to exp2, as in YOLOv5
    run_train(tiny_train_args(tiny_data, tmp_path, "exp", epochs=1, extra=["--noval"]))
    assert (tmp_path / "exp2" / "weights" / "last.pt").exists()


def _subprocess_train(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _weights_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_resume_after_sigkill_matches_uninterrupted(tiny_data, tmp_path):
    epochs = 4
    args = tiny_train_args(tiny_data, tmp_path, "full", epochs=epochs, extra=["--batch-size", "4", "--deterministic"])
    run_train(args)

    killed_args = tiny_train_args(tiny_data, tmp_path, "killed", epochs=epochs,
                                  extra=["--batch-size", "4", "--deterministic"])  # bit-identical on CUDA too
    proc = _subprocess_train(killed_args, tmp_path)
    last = tmp_path / "killed" / "weights" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows_at_kill = read_rows(tmp_path / "killed" / "results.csv")
    assert len(rows_at_kill) < epochs, "the run finished before it could be killed"

    run_train(["--resume", str(last), "--device", "cpu", "--workers", "0"])

    full = torch.load(tmp_path / "full/weights/last.pt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == epochs - 1
    assert _weights_equal(full["model"], resumed["model"])  # EMA weights
    assert _weights_equal(full["train_model"], resumed["train_model"])
    assert full["early_stopping"] == resumed["early_stopping"]  # patience counts on after a resume
    strip = lambda rows: [{k: v for k, v in r.items() if k != "x/elapsed_s"} for r in rows]
    assert strip(read_rows(tmp_path / "full/results.csv")) == strip(read_rows(tmp_path / "killed/results.csv"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(tiny_data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(ROOT / "train.py"),
           *tiny_train_args(tiny_data, tmp_path, "ddp", epochs=1, extra=["--batch-size", "8"])]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert runs == ["ddp"], runs  # one run folder: ranks agreed on it
    assert len(read_rows(tmp_path / "ddp" / "results.csv")) == 1
    assert (tmp_path / "ddp" / "weights" / "last.pt").exists()


def test_default_hyp_follows_the_dataset(tiny_data):
    assert train.default_hyp(str(tiny_data)).endswith("hyp.synthetic.yaml")  # the demo steps every batch
    assert train.default_hyp("coco128.yaml").endswith("hyp.scratch-low.yaml")  # YOLOv5's default elsewhere
    from utils.files import yaml_load
    demo, low = yaml_load(ROOT / "data/hyps/hyp.synthetic.yaml"), yaml_load(ROOT / "data/hyps/hyp.scratch-low.yaml")
    assert demo.pop("nbs") == 16 and demo == low  # only the nominal batch differs


# ---------------------------------------------------------------- flags, --weights, --resume, folders
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="module")
def one_epoch_run(tiny_data, tmp_path_factory):
    """A finished 1-epoch run, trained at --imgsz 50 (not a multiple of the stride 32)."""
    project = tmp_path_factory.mktemp("one_epoch")
    args = tiny_train_args(tiny_data, project, "exp", epochs=1, extra=["--noval"])
    args[args.index("--imgsz") + 1] = "50"
    run_train(args)
    return project / "exp"


def test_img_is_rounded_up_to_the_stride(one_epoch_run):
    from utils.files import yaml_load
    assert yaml_load(one_epoch_run / "opt.yaml")["imgsz"] == 64
    assert torch.load(one_epoch_run / "weights/last.pt", weights_only=True)["opt"]["imgsz"] == 64


@pytest.mark.parametrize("flag, value", [
    ("--epochs", "0"), ("--epochs", "-3"), ("--batch-size", "0"), ("--batch-size", "-1"), ("--imgsz", "16"),
    ("--workers", "-1"), ("--patience", "-1"), ("--save-period", "0"), ("--label-smoothing", "1.0"),
    ("--label-smoothing", "-0.1"), ("--close-mosaic", "-1"), ("--freeze", "-2"), ("--seed", "-1"),
])
def test_bad_numeric_flag_stops_before_any_work(flag, value):
    from utils.cli import UserError
    with pytest.raises(UserError, match=f"^{flag} {value}: must be "):
        train.parse_opt([flag, value])


def test_missing_weights_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--weights .*missing.pt: file not found"):
        train.parse_opt(["--weights", str(tmp_path / "missing.pt")])
    with pytest.raises(FileNotFoundError, match="yolov5s: file not found"):  # not named .pt: still checked
        train.parse_opt(["--weights", str(tmp_path / "yolov5s")])


def _built_model(args, nc, capsys):
    """The model Trainer._build_model makes for these flags, and the 'Transferred' line it printed."""
    from utils.trainer import Trainer
    opt = train.prepare_run(train.parse_opt([*args, "--device", "cpu"]))
    trainer = Trainer(opt)
    trainer.nc, trainer.names, trainer.hyp = nc, [f"c{i}" for i in range(nc)], {}
    trainer.resume_ckpt, trainer.device = None, torch.device("cpu")
    model = trainer._build_model()
    return model, next((ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Transferred")), "")


def test_weights_without_cfg_keeps_the_checkpoint_architecture(tmp_path, capsys):
    teacher = ROOT / "weights/demo_teacher_yolov5s.pt"
    model, line = _built_model(["--weights", str(teacher), "--project", str(tmp_path)], 8, capsys)
    assert model.yaml["width_multiple"] == 0.5  # yolov5s, not the from-scratch default yolov5n
    assert line.startswith("Transferred 349/349 "), line
    scratch, line = _built_model(["--project", str(tmp_path)], 8, capsys)
    assert scratch.yaml["width_multiple"] == 0.25 and not line  # no --weights: the demo's yolov5n
    assert not list(tmp_path.iterdir())  # choosing a run folder creates nothing


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path, capsys):
    from models.checkpoint import CheckpointError
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.txt"):
        _built_model(["--weights", str(notes), "--project", str(tmp_path)], 8, capsys)


@pytest.mark.skipif(not (SHARED / "weights/yolov5n.pt").exists(), reason="../shared/weights/yolov5n.pt absent")
@pytest.mark.parametrize("nc, transferred", [(80, "349/349"), (8, "343/349")])  # nc 8: the Detect convs differ
def test_official_yolov5n_transfers_every_tensor(tmp_path, capsys, nc, transferred):
    args = ["--weights", str(SHARED / "weights/yolov5n.pt"), "--project", str(tmp_path)]
    _, line = _built_model(args, nc, capsys)
    assert line.startswith(f"Transferred {transferred} "), line
    _, line = _built_model([*args, "--cfg", "yolov5n.yaml"], nc, capsys)  # the same anchors: still all
    assert line.startswith(f"Transferred {transferred} "), line


def test_exist_ok_rerun_starts_a_fresh_results_csv(one_epoch_run, tiny_data, tmp_path):
    shutil.copytree(one_epoch_run, tmp_path / "exp")
    run_train(tiny_train_args(tiny_data, tmp_path, "exp", epochs=1, extra=["--noval", "--exist-ok"]))
    rows = read_rows(tmp_path / "exp" / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [0]


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _unfinished_copy(run, dst, **changes):
    """A copy of `run` whose last.pt says it was meant to train 2 epochs (so it can be resumed)."""
    from models.checkpoint import save_checkpoint
    shutil.copytree(run, dst)
    last = dst / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["opt"]["epochs"] = 2
    ckpt.update(changes)
    save_checkpoint(last, ckpt)
    return last


def test_refused_resume_names_the_fix_and_changes_nothing(one_epoch_run, tmp_path):
    from utils.cli import UserError
    last = _unfinished_copy(one_epoch_run, tmp_path / "exp")
    cases = [
        (["--resume", str(one_epoch_run / "weights/best.pt")], train.main, "no optimizer state .*last.pt"),
        (["--resume", str(one_epoch_run / "weights/last.pt")], train.main, "already finished its 1 epochs"),
        (["--resume", str(last)], lambda opt: train.main(opt, DistillationBuilder),
         "trained with train.py; resume it with: python train.py --resume"),
    ]
    before = _snapshot(one_epoch_run), _snapshot(tmp_path)
    for args, main, message in cases:
        with pytest.raises((UserError, SystemExit), match=message):
            main(train.parse_opt(args))
    assert (_snapshot(one_epoch_run), _snapshot(tmp_path)) == before


def test_resume_keeps_workers_device_and_early_stopping(one_epoch_run, tmp_path):
    from utils.trainer import Trainer
    saved_state = {"best_fitness": 0.5, "best_epoch": 0}
    last = _unfinished_copy(one_epoch_run, tmp_path / "exp", early_stopping=saved_state)
    opt = train.prepare_run(train.parse_opt(["--resume", str(last)]))
    assert (opt.workers, opt.device) == (0, "cpu")  # the run's own, not the CLI defaults
    assert train.prepare_run(train.parse_opt(["--resume", str(last), "--workers", "1"])).workers == 1
    trainer = Trainer(opt)
    trainer._setup()
    assert trainer.stopper.state_dict() == saved_state
    fresh = torch.load(one_epoch_run / "weights/last.pt", weights_only=True)["early_stopping"]
    assert set(fresh) == {"best_fitness", "best_epoch"} and fresh["best_epoch"] == 0  # a fresh run saves it too


def test_autoanchor_keeps_the_anchors_with_too_few_boxes(capsys):
    from types import SimpleNamespace
    import numpy as np
    from models.yolo import Model
    from utils.autoanchor import check_anchors
    model = Model("yolov5n.yaml", nc=1)
    before = model.model[-1].anchors.clone()
    thin = np.array([[0, 0.5, 0.5, 0.9, 0.01]], dtype=np.float32)  # 576 x 6 px: no default anchor fits
    dataset = SimpleNamespace(shapes=np.array([[640, 640]] * 3), labels=[thin] * 3)
    assert check_anchors(dataset, model, imgsz=640) is False
    assert torch.equal(model.model[-1].anchors, before)
    assert "too few" in capsys.readouterr().out


def test_autoanchor_keeps_pretrained_anchors(capsys):
    from types import SimpleNamespace
    import numpy as np
    from models.yolo import Model
    from utils.autoanchor import check_anchors
    model = Model("yolov5n.yaml", nc=1)
    before = model.model[-1].anchors.clone()
    rng = np.random.default_rng(0)
    tiny = [np.column_stack([np.zeros(20), rng.uniform(0.2, 0.8, (20, 2)), rng.uniform(0.002, 0.006, (20, 2))])
            .astype(np.float32) for _ in range(10)]  # 1-4 px boxes: the default anchors fit badly
    dataset = SimpleNamespace(shapes=np.array([[640, 640]] * 10), labels=tiny)
    assert check_anchors(dataset, model, imgsz=640, pretrained="yolov5n.pt") is False
    assert torch.equal(model.model[-1].anchors, before)
    assert "Keeping the anchors of yolov5n.pt" in capsys.readouterr().out
    assert check_anchors(dataset, model, imgsz=640) is True  # from scratch: evolved for the data
    assert not torch.equal(model.model[-1].anchors, before)


def test_ctrl_c_prints_the_resume_command(tiny_data, tmp_path):
    args = tiny_train_args(tiny_data, tmp_path, "exp", epochs=50, extra=["--noval"])
    # the child gets Ctrl-C as in a terminal even when this run ignores SIGINT (nohup, background jobs)
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = tmp_path / "exp" / "weights" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1]
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(" ")]
    assert proc.returncode == 130, stderr
    assert lines[-1] == (f"Interrupted: the last finished epoch is saved in {last}; "
                         f"continue with: python train.py --resume {last}"), stderr
    assert "Traceback" not in stderr
    assert not list(last.parent.glob("*.tmp"))


def test_shown_path_is_relative_under_the_working_directory_only(tmp_path, monkeypatch):
    from utils.files import shown_path
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "runs" / "exp") == Path("runs/exp")
    outside = tmp_path.parent / "elsewhere"
    assert shown_path(outside) == outside
