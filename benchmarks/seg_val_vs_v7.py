"""This project's val.py beside YOLOv5 v7.0's segment/val.py on one -seg checkpoint and dataset (CPU).

The checkpoint may be this project's (its state dict is loaded into v7.0's SegmentationModel in the peer
process) or one v7.0 saved. The peer runs from ../shared/peers through tests/peer_v7.py; nothing of it
is imported here. The peer needs psutil, seaborn and thop: `pip install --no-deps --target DIR psutil seaborn
thop` and PEER_PYDEPS=DIR (as ../shared/peers/README.md's pydeps). Prints both results tuples (box P R mAP50 mAP50-95, mask the same) and their differences.

    PEER_PYDEPS=/tmp/peers/pydeps python benchmarks/seg_val_vs_v7.py --weights ../shared/weights/yolov5n-seg_v7.0.pt \
        --data ../shared/datasets/coco-seg/coco-seg.yaml --img 320
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

PEER_SNIPPET = r'''
import json, os, sys
sys.path[:0] = [p for p in os.environ.get("PEER_PYDEPS", "").split(os.pathsep) if p]  # psutil, seaborn, thop
import types
import torch
import utils.general
from models.yolo import SegmentationModel
import segment.val as v
# v7.0's NMS stops after 0.5 + 0.05 * batch seconds and drops the rest of the batch: on a busy CPU that
# changes its figures. A frozen clock turns the limit off (and only its speed report reads 0).
utils.general.time = types.SimpleNamespace(time=lambda: 0.0)
# --save-json: OpenCV >= 4.x resizes at most 128 channels at once (v7.0 passes up to 300 masks as channels)
_scale_image = v.scale_image
v.scale_image = lambda im1, m, im0, pad=None: __import__("numpy").concatenate(
    [_scale_image(im1, m[..., i:i + 128], im0, pad) for i in range(0, m.shape[2], 128)], 2)
weights, data, imgsz, batch, out, save_json = sys.argv[1:7]
ckpt = torch.load(weights, map_location="cpu", weights_only=False)
if isinstance(ckpt["model"], torch.nn.Module):  # saved by v7.0 (which may not have set .nc on it)
    model = ckpt["model"].float()
else:  # this project's format: a state dict and its YAML
    model = SegmentationModel(ckpt["model_yaml"], nc=len(ckpt["names"]))
    model.load_state_dict(ckpt["model"])
    model.names = dict(enumerate(ckpt["names"]))
model.nc = model.model[-1].nc  # segment/val.py checks it against the data
weights = out + ".v7.pt"
torch.save({"model": model.half()}, weights)
r = v.run(data, weights=weights, imgsz=int(imgsz), batch_size=int(batch), device="cpu", workers=0, plots=False,
          half=False, save_json=save_json == "1", project=out + "_runs")
json.dump([float(x) for x in r[0]], open(out, "w"))
'''

LABELS = ("box P", "box R", "box mAP50", "box mAP50-95", "mask P", "mask R", "mask mAP50", "mask mAP50-95")


def absolute_data(data, folder):
    """The dataset YAML with an absolute `path` (the peer resolves relative ones against its own tree)."""
    d = yaml.safe_load(Path(data).read_text())
    d["path"] = str((Path(data).parent / d.get("path", ".")).resolve())
    out = Path(folder) / Path(data).name
    out.write_text(yaml.safe_dump(d))
    return out


def fonts(config_dir):
    """The fonts v7.0 would download, from matplotlib's (the peers recipe)."""
    import shutil
    import matplotlib
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copy(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf", config_dir / name)


def compare(weights, data, imgsz=320, batch=32, save_json=False, folder=None):
    """(ours, v7.0): the first 8 values of each results tuple."""
    import peer_v7
    import val
    folder = Path(folder or tempfile.mkdtemp())
    data = absolute_data(data, folder)
    ours = val.run(str(data), weights=str(weights), imgsz=imgsz, batch_size=batch, device="cpu", workers=0,
                   plots=False, save_json=save_json, project=folder / "ours")[0][:8]
    root = peer_v7.extract(folder / "peer")
    fonts(root.parent / "config")
    out = folder / "v7.json"
    peer_v7.run(root, PEER_SNIPPET, Path(weights).resolve(), data, imgsz, batch, out, int(save_json), timeout=1200)
    return ours, json.loads(out.read_text())[:8]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/datasets/coco-seg/coco-seg.yaml"))
    ap.add_argument("--img", type=int, default=320)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--save-json", action="store_true", help="both score the finer masks they write as COCO JSON")
    opt = ap.parse_args()
    ours, v7 = compare(opt.weights, opt.data, opt.img, opt.batch, opt.save_json)
    print(f"{'':>14} {'this project':>12} {'v7.0':>8} {'difference':>10}")
    for label, a, b in zip(LABELS, ours, v7):
        print(f"{label:>14} {a:12.4f} {b:8.4f} {a - b:+10.4f}")


if __name__ == "__main__":
    main()
