"""bench_speed.py --peers: YOLOv5 v7.0 and the Adlik fork timed beside this project (issue 30, item 1).

The table test runs all six programs at 64 px for a few batches on CPU: it checks that every row is
measured and comes with its ratio, not the speeds (CPU figures at this size say nothing about a GPU).
It skips when ../shared/peers or the peers' packages (and wheels for them) are absent.
"""
import math
import os
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_speed  # noqa: E402
import peers  # noqa: E402
from replicas import replicated_dataset  # noqa: E402
from utils.label_cache import img2label_paths  # noqa: E402

COCO128 = ROOT.parent / "shared" / "datasets" / "coco128" / "coco128.yaml"
WHEELS = os.environ.get("PEER_WHEELS", str(ROOT / ".peer_wheels"))


def test_fork_patch_applies_to_its_line_only(tmp_path):
    if peers.missing_files(peers.DEFAULT_DIR):
        pytest.skip("../shared/peers is absent")
    patch = peers.DEFAULT_DIR / "adlik_loss.patch"
    head = patch.read_text().splitlines()[0]
    n = int(head.split("c")[0])
    old = patch.read_text().splitlines()[1][2:]
    target = tmp_path / "loss.py"
    target.write_text("".join(f"line {i}\n" for i in range(1, n)) + old + "\nlast\n")
    peers.apply_normal_diff(patch, target)
    lines = target.read_text().splitlines()
    assert "int(gain[3]) - 1" in lines[n - 1] and "int(gain[3]) - 1" not in old
    assert lines[:n - 1] == [f"line {i}" for i in range(1, n)] and lines[n:] == ["last"]
    with pytest.raises(peers.PeerSetupError, match="does not apply"):
        peers.apply_normal_diff(patch, target)  # already patched: the old line is gone


def test_replicas_give_every_copy_its_own_name_and_labels(tiny_data, tmp_path):
    """The peers key their label caches by path: repeated paths would shrink back to the unique images."""
    yaml_path = replicated_dataset(tiny_data, 37, 5, tmp_path / "rep")
    train = sorted((tmp_path / "rep" / "images" / "train").iterdir())
    labels = sorted((tmp_path / "rep" / "labels" / "train").iterdir())
    assert len(train) == 37 and len({p.name for p in train}) == 37
    assert len(list((tmp_path / "rep" / "images" / "val").iterdir())) == 5
    assert len({p.resolve() for p in train}) == 16  # the tiny set's 16 train images, cycled
    source_labels = [Path(f) for f in img2label_paths([str(p.resolve()) for p in train])]
    assert [p.stem for p in labels] == [p.stem for p, lb in zip(train, source_labels) if lb.is_file()]
    assert all(lb.resolve() == src for lb, src in zip(labels, (s for s in source_labels if s.is_file())))
    assert yaml_path.name == "replicated.yaml"


@pytest.mark.slow  # six programs start and train or validate: ~2 min on the busy 2-core box
def test_peers_table_has_every_row_with_ratios(tmp_path, capsys):
    if not COCO128.is_file():
        pytest.skip("../shared/datasets/coco128 is absent")
    try:
        peers.setup(tmp_path / "probe", wheels=WHEELS)
    except peers.PeerSetupError as e:
        pytest.skip(str(e))
    rows = bench_speed.main(["--peers", "--device", "cpu", "--imgsz", "64", "--batch", "2", "--warmup", "3",
                             "--iters", "2", "--student", "yolov5n.yaml", "--teacher", "yolov5n.yaml",
                             "--workers", "0", "--data", str(COCO128), "--val-images", "32",
                             "--peer-wheels", WHEELS, "--peer-logs", str(tmp_path / "logs")])
    assert [r[0].split(" vs ")[1] for r in rows] == ["v7.0 train.py", "Adlik train_distillation.py", "v7.0 val.py"]
    for what, ours, peer, *_ in rows:
        assert math.isfinite(ours) and ours > 0 and math.isfinite(peer) and peer > 0, (what, ours, peer)
        assert peers.ratio(ours, peer) == pytest.approx(ours / peer)
    out = capsys.readouterr().out
    table = out.split("| measurement (ours vs peer) |", 1)[1].splitlines()
    assert table[0].endswith("| speed ours/peer | memory ours/peer |")
    assert len(table) == 2 + 3 and all(line.count("|") == 8 for line in table[1:])
    for line, (_, ours, peer, *_) in zip(table[2:], rows):
        assert line.split("|")[6].strip() == f"{ours / peer:.2f}"  # the ratio column is ours over the peer's
    timings = sorted(p.name for p in (tmp_path / "logs").glob("*.json"))
    assert timings == ["fork_distill.json", "v7_train.json"]  # the peers' clocks stopped at the last timed batch


def test_peer_timer_clocks_batches_from_warmup_and_stops_the_script(tmp_path):
    """peer_timer.py counts one batch per Tensor.backward, writes the window's figures, and ends the run there."""
    import json
    import subprocess
    script = tmp_path / "fake_train.py"
    script.write_text("import time, torch\n"
                      "w = torch.ones(2, requires_grad=True)\n"
                      "for i in range(10):\n"
                      "    time.sleep(0.05 if i >= 2 else 0.3)  # slow first batches stay out of the window\n"
                      "    (w * 2).sum().backward()\n"
                      "    print('batch', i, flush=True)\n")
    out = tmp_path / "t.json"
    env = dict(os.environ, PEER_TIMER_START="2", PEER_TIMER_LAST="5", PEER_TIMER_OUT=str(out))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peer_timer.py"), str(script)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [w for i in range(5) for w in ("batch", str(i))]  # it stopped inside batch 5
    got = json.loads(out.read_text())
    assert got["batches"] == 4 and got["peak_gb"] is None  # batches 2..5; no GPU memory on CPU
    assert 4 * 0.05 <= got["seconds"] < 4 * 0.3  # four fast batches, none of the slow ones
    env["PEER_TIMER_LAST"] = "20"  # a script that ends before the last timed batch is an error, not a figure
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peer_timer.py"), str(script)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "ended after 10 batches" in done.stderr


@pytest.mark.slow  # two ranks train one tiny epoch: ~40 s on the busy 2-core box
def test_ddp_launcher_runs_two_ranks_with_a_feature_term(tiny_data, tmp_path):
    """benchmarks/ddp_one_gpu.py under torchrun (on CPU here, gloo either way): both ranks train to the end."""
    import subprocess
    teacher = bench_speed.teacher_for("yolov5s.yaml", 8, tmp_path)  # random weights, the tiny set's 8 classes
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "benchmarks" / "ddp_one_gpu.py"), "train_distillation.py", "--data", str(tiny_data),
           "--cfg", "yolov5n.yaml", "--weights", "", "--t_weights", str(teacher), "--d_feature", "cwd",
           "--epochs", "1", "--imgsz", "64", "--batch-size", "8", "--workers", "0", "--device", "cpu",
           "--project", str(tmp_path), "--name", "ddp", "--noplots", "--noval"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    header, row = (tmp_path / "ddp" / "results.csv").read_text().splitlines()[:2]
    assert "train/feat" in header.split(",") and float(row.split(",")[header.split(",").index("train/feat")]) > 0
