"""Run YOLOv5 detection or instance segmentation on images, folders, globs, .txt path lists and videos.

Usage (YOLOv5 flags):
    python detect.py --weights runs/train/exp/weights/best.pt --source img.jpg
    python detect.py --weights yolov5s.pt --source path/to/dir --save-txt --save-conf
    python detect.py --weights best.pt --source 'images/*.jpg' --conf-thres 0.4 --classes 0 2
    python detect.py --weights best.pt --source list.txt      # one path per line
    python detect.py --weights best.pt --source video.mp4     # annotated .mp4 + per-frame labels
Results go to runs/detect/expN: annotated images/videos, labels/*.txt (`cls xc yc w h [conf]`,
normalised), crops/<class>/*.jpg with --save-crop.
A segmentation (-seg) model also draws its masks, and its labels are YOLOv5 v7.0's polygon rows
(`cls x1 y1 x2 y2 ... [conf]`, normalised); --retina-masks makes masks at the image's own resolution:
    python detect.py --weights yolov5n-seg.pt --source img.jpg --save-txt --retina-masks
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import non_max_suppression, scale_boxes, xyxy2xywh
from utils.cli import UserError
from utils.files import increment_path, shown_path
from utils.masks import masks_to_polygons, process_mask, process_mask_native, scale_masks, scale_polygons
from utils.plots import Annotator, colors
from utils.sources import LoadSources, check_imgsz, collect_files
from utils.torch_utils import select_device

ROOT = Path(__file__).resolve().parent
CROP_GAIN, CROP_PAD = 1.02, 10  # crops are slightly larger than the box, as YOLOv5 saves them
MASK_CHUNK = 16  # -seg masks brought to the image size at once: 16 x 8 MB of float32 for a 1080p frame


def check_display():
    """--view-img needs a window system; fail before inference rather than deep inside cv2."""
    if sys.platform.startswith('linux') and not (os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY')):
        raise UserError('--view-img needs a display, but this machine is headless (no $DISPLAY); '
                           'drop --view-img and look at the saved results instead')
    try:
        cv2.namedWindow('yolov5-distill check', cv2.WINDOW_NORMAL)
        cv2.destroyWindow('yolov5-distill check')
    except cv2.error as e:
        raise UserError(f'--view-img: this OpenCV build cannot open windows ({e}); '
                           f'install opencv-python (not -headless) or drop --view-img') from e


def load_detector(weights, device, half):
    """Fused float model in eval mode (FP16 on CUDA with --half); a YAML gives random weights."""
    from models.checkpoint import load_model  # late import keeps `--help` fast

    model, meta = load_model(weights, device=device, fuse=True)
    if meta['source'] == 'yaml':
        print(f'WARNING: {weights} is a model config: detecting with random weights (smoke test only)')
    if half and device.type == 'cpu':
        print('WARNING: --half needs a CUDA device; running in FP32 on CPU')
        half = False
    model = model.half() if half else model.float()
    return model.eval(), half, meta


def check_classes(classes, nc):
    bad = [c for c in classes or [] if not 0 <= int(c) < nc]
    if bad:
        raise UserError(f'--classes {bad} out of range: the model has {nc} classes (0..{nc - 1})')


def label_text(names, cls, conf, hide_labels, hide_conf):
    if hide_labels:
        return ''
    return names[cls] if hide_conf else f'{names[cls]} {conf:.2f}'


def _label_row(cls, coords, conf, save_conf):
    row = (int(cls), *coords, conf) if save_conf else (int(cls), *coords)
    return ('%g ' * len(row)).rstrip() % row


def label_lines(det, shape, save_conf):
    """`cls xc yc w h [conf]` rows, normalised to the original image shape (h, w)."""
    gn = torch.tensor(shape)[[1, 0, 1, 0]]
    lines = []
    for *xyxy, conf, cls in det.tolist():
        xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
        lines.append(_label_row(cls, xywh, conf, save_conf))
    return lines


def polygon_lines(masks, det, shape, save_conf):
    """v7.0's segment rows `cls x1 y1 x2 y2 ... [conf]`, normalised to the original image shape (h, w),
    from each detection's mask (`masks` [n, h, w] on the letterboxed input or on the image itself)."""
    polygons = scale_polygons(masks.shape[1:], masks_to_polygons(masks), shape, normalize=True)
    lines = []
    for polygon, (conf, cls) in zip(polygons, det[:, 4:6].tolist()):
        if len(polygon) >= 3:  # v7.0 writes a bare `cls` for an empty mask; label readers reject that row
            lines.append(_label_row(cls, polygon.reshape(-1).tolist(), conf, save_conf))
    return lines


def instance_masks(protos, det, input_shape, im0_shape, retina):
    """Masks of the detections (boxes still in input pixels) -> (masks the polygons come from, the same
    masks on the original image [n, h0, w0]). As v7.0: made at the input size, then cut out of the
    letterbox and resized; --retina-masks: from the prototypes straight to the image's resolution.
    Done MASK_CHUNK detections at a time: the float intermediates at image size stay bounded."""
    parts = [_instance_masks(protos, det[i:i + MASK_CHUNK], input_shape, im0_shape, retina)
             for i in range(0, max(len(det), 1), MASK_CHUNK)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _instance_masks(protos, det, input_shape, im0_shape, retina):
    if retina:
        boxes0 = scale_boxes(input_shape, det[:, :4].clone(), im0_shape)
        masks0 = process_mask_native(protos, det[:, 6:], boxes0, input_shape, im0_shape)
        return masks0, masks0
    masks = process_mask(protos, det[:, 6:], det[:, :4], input_shape, upsample=True)
    return masks, scale_masks(input_shape, masks, im0_shape)


def save_one_crop(xyxy, im, file):
    """Save the box region (grown by CROP_GAIN + CROP_PAD px, clipped) as a new numbered jpg."""
    b = xyxy2xywh(torch.tensor(xyxy, dtype=torch.float32).view(1, 4))
    b[:, 2:] = b[:, 2:] * CROP_GAIN + CROP_PAD
    x1, y1 = (b[0, :2] - b[0, 2:] / 2).tolist()
    x2, y2 = (b[0, :2] + b[0, 2:] / 2).tolist()
    h, w = im.shape[:2]
    x1, x2 = int(max(0, x1)), int(min(w, x2))
    y1, y2 = int(max(0, y1)), int(min(h, y2))
    if x2 <= x1 or y2 <= y1:
        return None
    file = increment_path(file, mkdir=False)
    file.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(file.with_suffix('.jpg')), im[y1:y2, x1:x2])
    return file


class ResultWriter:
    """Writes annotated images and videos (one VideoWriter per source video)."""

    def __init__(self):
        self.vid_path, self.vid_writer = None, None

    def write(self, save_path, im0, cap):
        if cap is None:
            cv2.imwrite(save_path, im0)
            return
        if self.vid_path != save_path:
            self.release()
            self.vid_path = save_path
            fps = cap.get(cv2.CAP_PROP_FPS) or 30
            h, w = im0.shape[:2]
            save_path = str(Path(save_path).with_suffix('.mp4'))  # mp4v is the one codec we rely on
            self.vid_writer = cv2.VideoWriter(save_path, cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
            if not self.vid_writer.isOpened():
                raise UserError(f'cannot write video {save_path}: this OpenCV build lacks the mp4v codec')
        self.vid_writer.write(im0)

    def release(self):
        if self.vid_writer is not None:
            self.vid_writer.release()
        self.vid_path, self.vid_writer = None, None


def make_save_dir(project, name, exist_ok, save_txt):
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / 'labels' if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    return save_dir


@torch.no_grad()
def run(weights=ROOT / 'weights/demo_teacher_yolov5s.pt', source=ROOT / 'data/images', imgsz=None,
        conf_thres=0.25, iou_thres=0.45, max_det=1000, device='', view_img=False, save_txt=False,
        save_conf=False, save_crop=False, nosave=False, classes=None, agnostic_nms=False,
        project=ROOT / 'runs/detect', name='exp', exist_ok=False, line_thickness=3, hide_labels=False,
        hide_conf=False, half=False, vid_stride=1, retina_masks=False):
    """Detect on `source`; returns the run folder (runs/detect/expN). Arguments mirror the CLI flags."""
    if not (0 <= conf_thres <= 1 and 0 <= iou_thres <= 1):
        raise UserError(f'--conf-thres {conf_thres} and --iou-thres {iou_thres} must lie in [0, 1]')
    if max_det < 1:
        raise UserError(f'--max-det must be >= 1, got {max_det}')
    if view_img:
        check_display()
    collect_files(source)  # fail on a bad --source before spending time on the model
    device = select_device(device)
    model, half, meta = load_detector(weights, device, half)
    stride, names = int(model.stride.max()), list(model.names)
    check_classes(classes, len(names))
    imgsz = check_imgsz(imgsz or [meta.get('imgsz') or 640], stride)  # default: the training size
    dataset = LoadSources(source, img_size=imgsz, stride=stride, vid_stride=vid_stride)
    save_dir = make_save_dir(project, name, exist_ok, save_txt)
    opts = dict(conf_thres=conf_thres, iou_thres=iou_thres, classes=classes, agnostic=agnostic_nms, max_det=max_det)
    out = OutputOptions(save_dir, names, save_txt, save_conf, save_crop, line_thickness, hide_labels, hide_conf,
                        retina_masks)
    writer, seen, times = ResultWriter(), 0, np.zeros(3)
    try:
        for path, im, im0, cap, s in readable_items(dataset):
            det, protos, dt = predict(model, im, device, half, opts)
            times += dt
            seen += 1
            frame = dataset.frame if cap is not None else None
            im0 = handle_result(det, im.shape[1:], im0, Path(path), frame, out, protos)
            if view_img:
                cv2.imshow(str(path), im0)
                cv2.waitKey(1)
            if not nosave:
                writer.write(str(save_dir / Path(path).name), im0, cap)
            print(f'{s}{im.shape[1]}x{im.shape[2]} {summarise(det, names)}{dt[1] * 1e3:.1f}ms')
    finally:
        writer.release()
    report(times, seen, imgsz, save_dir, save_txt, nosave)
    return save_dir


def readable_items(dataset):
    """The dataset's items; an image OpenCV cannot decode is reported and skipped, as YOLOv5 does."""
    items = iter(dataset)
    while True:
        position = dataset.count
        try:
            item = next(items)
        except StopIteration:
            return
        except ValueError as e:
            if dataset.count == position:  # the source did not move on: skipping would loop forever
                raise
            print(f'WARNING: {e}; skipped')
            continue
        yield item


def predict(model, im, device, half, opts):
    """Pre-process, infer and NMS one image; returns (det [n, 6 + nm] in input pixels, the image's mask
    prototypes [nm, h/4, w/4] or None for a detection model, seconds per stage)."""
    t0 = time.perf_counter()
    x = torch.from_numpy(im).to(device)
    x = (x.half() if half else x.float()) / 255
    x = x[None]
    t1 = time.perf_counter()
    pred = model(x)
    t2 = time.perf_counter()
    nm = model.model[-1].nm if model.task == 'segment' else 0
    det = non_max_suppression(pred, nm=nm, **opts)[0]  # a -seg row keeps its nm mask coefficients
    protos = pred[1][1][0] if nm else None  # eval-mode -seg output: (decoded, (levels, protos))
    t3 = time.perf_counter()
    return det, protos, np.array([t1 - t0, t2 - t1, t3 - t2])


@dataclass
class OutputOptions:
    """What to write for each image and how to draw it (the --save-* and --hide-* flags)."""
    save_dir: Path
    names: list
    save_txt: bool = False
    save_conf: bool = False
    save_crop: bool = False
    line_thickness: int = 3
    hide_labels: bool = False
    hide_conf: bool = False
    retina_masks: bool = False


def handle_result(det, input_shape, im0, p, frame, out, protos=None):
    """Map boxes (and a -seg model's masks, from `protos`) back to im0, write labels / crops, and return
    the annotated image."""
    imc = im0.copy() if out.save_crop else im0  # crops come from the clean image, not the drawn one
    masks = masks0 = None
    if protos is not None:
        masks, masks0 = instance_masks(protos, det, input_shape, im0.shape, out.retina_masks)
    det = det[:, :6].clone()
    det[:, :4] = scale_boxes(input_shape, det[:, :4], im0.shape).round()
    if out.save_txt and len(det):  # like YOLOv5: no file for an image without detections
        stem = p.stem if frame is None else f'{p.stem}_{frame}'  # one file per frame, as YOLOv5
        lines = (label_lines(det, im0.shape[:2], out.save_conf) if masks is None else
                 polygon_lines(masks, det, im0.shape[:2], out.save_conf))
        with open(out.save_dir / 'labels' / f'{stem}.txt', 'w') as f:  # 'w': an --exist-ok rerun must not append
            f.writelines(line + '\n' for line in lines)
    annotator = Annotator(im0, line_width=out.line_thickness)
    if masks0 is not None:  # under the boxes, so labels stay readable
        annotator.masks(masks0, [colors(int(c), True) for c in det[:, 5].tolist()])
    for *xyxy, conf, cls in reversed(det.tolist()):  # best box drawn last, on top
        c = int(cls)
        annotator.box_label(xyxy, label_text(out.names, c, conf, out.hide_labels, out.hide_conf),
                            color=colors(c, True))
        if out.save_crop:
            save_one_crop(xyxy, imc, out.save_dir / 'crops' / out.names[c] / f'{p.stem}.jpg')
    return annotator.result()


def summarise(det, names):
    counts = det[:, 5].long().bincount(minlength=len(names)).tolist() if len(det) else []
    parts = [f"{n} {names[c]}{'s' * (n > 1)}" for c, n in enumerate(counts) if n]
    return ', '.join(parts) + ', ' if parts else '(no detections), '


def report(times, seen, imgsz, save_dir, save_txt, nosave):
    t = tuple(times / max(seen, 1) * 1e3)
    print(f'Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape (1, 3, {imgsz[0]}, {imgsz[1]})' % t)
    if save_txt or not nosave:
        n = len(list((save_dir / 'labels').glob('*.txt'))) if save_txt else 0
        extra = f"\n{n} labels saved to {shown_path(save_dir) / 'labels'}" if save_txt else ''
        print(f'Results saved to {shown_path(save_dir)}{extra}')


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description='YOLOv5 detection', formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--weights', nargs='+', type=str, default=str(ROOT / 'weights/demo_teacher_yolov5s.pt'),
                   help='checkpoint (.pt, own or official YOLOv5) or a model YAML (random weights, smoke test)')
    p.add_argument('--source', nargs='+', type=str, default=str(ROOT / 'data/images'),
                   help='image, folder, glob, .txt list of paths or video file')
    p.add_argument('--imgsz', '--img', '--img-size', nargs='+', type=int, default=None,
                   help='inference size h,w (default: the size the checkpoint was trained at, else 640)')
    p.add_argument('--conf-thres', type=float, default=0.25, help='confidence threshold')
    p.add_argument('--iou-thres', type=float, default=0.45, help='NMS IoU threshold')
    p.add_argument('--max-det', type=int, default=1000, help='maximum detections per image')
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or cpu')
    p.add_argument('--view-img', action='store_true', help='show results (needs a display)')
    p.add_argument('--save-txt', action='store_true', help='save results to labels/*.txt')
    p.add_argument('--save-conf', action='store_true', help='save confidences in --save-txt labels')
    p.add_argument('--save-crop', action='store_true', help='save cropped prediction boxes')
    p.add_argument('--nosave', action='store_true', help='do not save images/videos')
    p.add_argument('--classes', nargs='+', type=int, help='filter by class: --classes 0, or --classes 0 2 3')
    p.add_argument('--agnostic-nms', action='store_true', help='class-agnostic NMS')
    p.add_argument('--project', default=str(ROOT / 'runs/detect'), help='save results to project/name')
    p.add_argument('--name', default='exp', help='save results to project/name')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    p.add_argument('--line-thickness', default=3, type=int, help='bounding box thickness (pixels)')
    p.add_argument('--hide-labels', action='store_true', help='hide labels')
    p.add_argument('--hide-conf', action='store_true', help='hide confidences')
    p.add_argument('--half', action='store_true', help='use FP16 half-precision inference (CUDA only)')
    p.add_argument('--vid-stride', type=int, default=1, help='video frame-rate stride')
    p.add_argument('--retina-masks', action='store_true',
                   help='segmentation models: make masks at the image resolution (sharper, slower)')
    opt = p.parse_args(argv)
    if isinstance(opt.weights, list):
        if len(opt.weights) > 1:
            p.error('--weights: ensembles are not supported; give one checkpoint')
        opt.weights = opt.weights[0]
    return opt


def main(opt):
    run(**vars(opt))


if __name__ == '__main__':
    from utils.cli import run_cli
    run_cli(main, parse_opt)
