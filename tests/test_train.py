"""train.py end to end on a tiny synthetic set: run folder, results.csv, checkpoints, resume, DDP."""
import csv
import os
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
from utils.logging import YOLOV5_COLUMNS


def read_rows(csv_path):
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def run_train(args):
    return train.main(train.parse_opt(args))


def test_train_writes_yolov5_run_folder(tiny_data, tmp_path):
    results = run_train(tiny_train_args(tiny_data, tmp_path, "exp", epochs=2))
    run = tmp_path / "exp"
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
