"""COCO-format JSON for any dataset: predictions, ground truth built from YOLO labels, pycocotools mAP.

`val.py --save-json` writes the predictions; on COCO itself the official instances JSON is the
ground truth (as in YOLOv5), on any other dataset the ground truth is built here from the labels the
loader read, so pycocotools' mAP can be reported beside the project's on every dataset. Segmentation adds
RLE masks to the predictions and the label polygons to the ground truth, and pycocotools' `segm`
evaluation runs beside `bbox` (as v7.0's segment/val.py).
"""
import json
from pathlib import Path

import numpy as np

from utils.boxes import xyxy2xywh

MISSING_COCO_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # ids COCO reserves but never annotates


def coco80_to_coco91_class():
    """COCO category id (1-90, with gaps) of each of the 80 YOLO class indices."""
    return [i for i in range(1, 91) if i not in MISSING_COCO_IDS]


def is_coco_dataset(data):
    """YOLOv5's test: the COCO val list (or folder) of the standard coco.yaml layout."""
    val = str(data.get("val") or "").replace("\\", "/")
    return val.endswith(("coco/val2017.txt", "coco/images/val2017"))


def image_id(path):
    """COCO image id of an image file, as YOLOv5 writes it: the numeric stem, else the stem."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def rle(masks):
    """COCO RLE dicts (counts as str, JSON-ready) of uint8 0/1 masks [n, h, w]."""
    from pycocotools.mask import encode
    rles = encode(np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))) if len(masks) else []
    for r in rles:
        r["counts"] = r["counts"].decode("utf-8")
    return rles


def prediction_entries(predn, path, class_map, masks=None):
    """COCO results entries (top-left xywh in original pixels) for one image's [n, 6] detections;
    `masks` (uint8 [n, h0, w0] on the original image) adds each one's RLE under "segmentation"."""
    box = xyxy2xywh(predn[:, :4])
    box[:, :2] -= box[:, 2:] / 2  # centre -> top-left corner
    iid = image_id(path)
    entries = [{"image_id": iid, "category_id": class_map[int(p[5])], "bbox": [round(x, 3) for x in b],
                "score": round(p[4], 5)} for p, b in zip(predn.tolist(), box.tolist())]
    if masks is not None:
        for entry, r in zip(entries, rle(masks)):
            entry["segmentation"] = r
    return entries


def _polygon_area(xy):
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def ground_truth_json(im_files, shapes, labels, names, class_map, segments=None):
    """COCO instances dict from YOLO labels: shapes [N, 2] original (w, h), labels [n, 5] normalised;
    `segments` (per image, per label row a normalised (k, 2) polygon) adds the polygons and their areas."""
    images, annotations = [], []
    segments = segments or [None] * len(im_files)
    for f, (w, h), lb, polygons in zip(im_files, np.asarray(shapes).tolist(), labels, segments):
        iid = image_id(f)
        images.append({"id": iid, "file_name": Path(f).name, "width": int(w), "height": int(h)})
        for i, (c, xc, yc, bw, bh) in enumerate(np.asarray(lb, dtype=np.float64).reshape(-1, 5).tolist()):
            bw, bh = bw * w, bh * h
            ann = {"id": len(annotations) + 1, "image_id": iid, "category_id": class_map[int(c)],
                   "bbox": [xc * w - bw / 2, yc * h - bh / 2, bw, bh], "area": bw * bh, "iscrowd": 0}
            if polygons is not None:
                xy = np.asarray(polygons[i], dtype=np.float64).reshape(-1, 2) * (w, h)
                ann["segmentation"], ann["area"] = [xy.reshape(-1).tolist()], _polygon_area(xy)
            annotations.append(ann)
    categories = [{"id": class_map[i], "name": str(n)} for i, n in sorted(names.items())]
    return {"images": images, "annotations": annotations, "categories": categories}


def _ids_as_strings(gt, preds):
    """pycocotools sorts image ids: a mix of numeric and other stems must all become strings."""
    if len({type(im["id"]) for im in gt["images"]}) > 1:
        for d in gt["images"]:
            d["id"] = str(d["id"])
        for d in gt["annotations"] + preds:
            d["image_id"] = str(d["image_id"])


def pycocotools_map(gt, preds, image_ids=None, iou_type="bbox"):
    """(mAP@0.5:0.95, mAP@0.5) from pycocotools for a ground-truth dict (or JSON path) and result
    entries, of boxes or (iou_type 'segm') masks; None (with the reason printed) when pycocotools is
    missing or cannot run."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        print("pycocotools evaluation skipped: pycocotools is not installed (pip install pycocotools)")
        return None
    try:
        if isinstance(gt, dict):
            gt, preds = json.loads(json.dumps(gt)), [dict(p) for p in preds]
            _ids_as_strings(gt, preds)
            anno = COCO()
            anno.dataset = gt
            anno.createIndex()
        else:
            anno = COCO(str(gt))
        ev = COCOeval(anno, anno.loadRes(preds), iou_type)
        if image_ids is not None:
            ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return float(ev.stats[0]), float(ev.stats[1])
    except Exception as e:  # mismatched ids and the like: report, keep the project's metrics
        print(f"pycocotools unable to run: {e}")
        return None


def save_and_evaluate(jdict, dataset, data, names, class_map, save_dir, stem="", iou_types=("bbox",)):
    """Write the predictions (and the ground truth built from the labels) to save_dir and return
    {iou_type: pycocotools' (mAP@0.5:0.95, mAP@0.5)} for those that ran (empty when none could).
    COCO itself uses its official instances JSON; 'segm' takes the polygons of a segmentation dataset."""
    save_dir = Path(save_dir)
    pred_json = save_dir / f"{stem}_predictions.json"
    pred_json.write_text(json.dumps(jdict))
    print(f"Saved {len(jdict)} predictions to {pred_json}")
    if not jdict:
        return {}
    image_ids, gt = None, Path(data.get("path") or "../coco") / "annotations" / "instances_val2017.json"
    if is_coco_dataset(data) and gt.exists():
        image_ids = [image_id(f) for f in dataset.im_files]  # evaluate only the images that were validated
        print(f"\nEvaluating pycocotools mAP... ({gt})")
    else:
        gt = ground_truth_json(dataset.im_files, dataset.shapes, dataset.labels, names, class_map,
                               segments=dataset.segments if "segm" in iou_types else None)
        anno_json = save_dir / "ground_truth.json"
        anno_json.write_text(json.dumps(gt))
        print(f"\nEvaluating pycocotools mAP... (ground truth built from the labels: {anno_json})")
    found = {t: pycocotools_map(gt, jdict, image_ids, t) for t in iou_types}
    return {t: v for t, v in found.items() if v is not None}
