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
    assert all(math.isfinite(rate) and rate > 0 for _, rate, _, _ in rows)
    floor_student, floor_distill = rows[0][1], rows[1][1]
    assert floor_distill < floor_student  # the teacher's forward adds FLOPs to every image
    assert rows[2][3] == floor_student and rows[3][3] == floor_distill  # step rows are set against the floor
    table = capsys.readouterr().out.split("| measurement |", 1)[1].splitlines()
    assert len(table) == 2 + len(expected)  # rest of the header, its rule, one line per row: one table
