"""The benchmark scripts run (tiny, on CPU) so that they never rot; GPU figures come from the same code."""
import math
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_speed  # noqa: E402
import pytest  # noqa: E402

TINY = ["--device", "cpu", "--imgsz", "64", "--batch", "2", "--iters", "1", "--warmup", "1",
        "--student", "yolov5n.yaml", "--teacher", "yolov5n.yaml", "--nc", "3", "--workers", "0"]


def test_bench_speed_step_rows_use_the_trainer_step(capsys):
    """The fast part in the default run: the rows built on Trainer._train_step / _optimizer_step."""
    rows = bench_speed.main([*TINY, "--sections", "floor", "step"])
    assert [r[0].split(" (")[0] for r in rows] == ["FLOP floor, student step", "FLOP floor, distillation step",
                                                    "step alone: yolov5n", "step alone: yolov5n + teacher yolov5n"]
    assert all(math.isfinite(rate) and rate > 0 for _, rate, _, _ in rows)
    assert rows[2][3] == rows[0][1] and rows[3][3] == rows[1][1]  # each step row against its floor
    assert "| step alone: yolov5n |" in capsys.readouterr().out


@pytest.mark.slow  # two 1-epoch trainings and two val.py runs: 3-7 min on the busy 2-core box
def test_bench_speed_prints_one_table_with_every_row(tiny_data, capsys):
    rows = bench_speed.main([*TINY, "--data", str(tiny_data)])
    names = [r[0] for r in rows]
    expected = ["FLOP floor, student step", "FLOP floor, distillation step", "step alone: yolov5n",
                "step alone: yolov5n + teacher yolov5n", "data pipeline alone (0 workers",
                "train.py end to end", "train_distillation.py end to end", "val.py whole pass"]
    assert len(names) == len(expected) and all(n.startswith(e) for n, e in zip(names, expected)), names
    assert all(math.isfinite(rate) and rate > 0 for _, rate, _, _ in rows[:-1])
    assert rows[-1][1] > 0 or math.isnan(rows[-1][1])  # val: nan when start-up noise hides the extra work
    floor_student, floor_distill = rows[0][1], rows[1][1]
    assert floor_distill < floor_student  # the teacher's forward adds FLOPs to every image
    assert rows[2][3] == floor_student and rows[3][3] == floor_distill  # step rows are set against the floor
    table = capsys.readouterr().out.split("| measurement |", 1)[1].splitlines()
    assert len(table) == 2 + len(expected)  # rest of the header, its rule, one line per row: one table


def test_bench_val_rate_is_extra_images_over_extra_time_or_nan(monkeypatch, tmp_path, tiny_data):
    """Start-up cancels between the two val.py runs; a longer run that is not slower gives no rate."""
    from types import SimpleNamespace
    a = SimpleNamespace(batch=2, iters=1)  # short run 4 images, long run 12
    for seconds, expected in (((1.0, 3.0), 8 / 2.0), ((2.0, 2.0), math.nan), ((2.0, 1.5), math.nan)):
        times = iter(seconds)
        monkeypatch.setattr(bench_speed, "run_val", lambda *args, times=times: next(times))
        rate = bench_speed.bench_val(a, tiny_data, "w.pt", tmp_path)
        assert rate == pytest.approx(expected, nan_ok=True)


def test_revalidate_keeps_val_metrics_of_runs_and_weights_files(tiny_data, tmp_path):
    """revalidate.py writes the metrics val.run gives for the same weights, beside a run or a .pt, once."""
    import json

    import revalidate
    import val
    from models.checkpoint import model_checkpoint_fields, save_checkpoint
    from models.yolo import Model
    from utils.synthetic import CLASS_NAMES

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    run = tmp_path / "sweep" / "base_s0"
    (run / "weights").mkdir(parents=True)
    (run / "results.csv").write_text("epoch,metrics/mAP_0.5\n0,0.1\n")
    pt = tmp_path / "teacher.pt"
    save_checkpoint(run / "weights" / "best.pt", model_checkpoint_fields(Model("yolov5n.yaml", nc=len(CLASS_NAMES))))
    save_checkpoint(pt, model_checkpoint_fields(Model("yolov5n.yaml", nc=len(CLASS_NAMES))))
    kw = dict(data=str(tiny_data), imgsz=64, batch_size=4, device="cpu", workers=0)
    done = revalidate.run([tmp_path / "sweep", pt], name="at64", **kw)
    assert done == [tmp_path / "teacher_val_at64.json", run / "val_at64.json"]
    got = json.loads((run / "val_at64.json").read_text())
    (p, r, map50, map5095, *_), _, _ = val.run(weights=str(run / "weights" / "best.pt"), half=False, plots=False,
                                               project=tmp_path / "val", **kw)
    assert (got["mAP_0.5"], got["mAP_0.5:0.95"], got["precision"], got["recall"]) == (map50, map5095, p, r)
    assert got["imgsz"] == 64 and got["weights"].endswith("best.pt")
    assert revalidate.run([tmp_path / "sweep", pt], name="at64", **kw) == []  # kept: not measured twice
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        revalidate.targets([tmp_path / "missing.pt"], "at64")
