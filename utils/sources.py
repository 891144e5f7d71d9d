"""Inference inputs for detect.py: images, folders, globs, txt lists of paths and video files.

`LoadSources` yields `(path, im, im0, cap, description)` per image or video frame, where `im` is
the letterboxed network input (CHW RGB uint8), `im0` the original BGR frame, and `cap` the
`cv2.VideoCapture` of the video being read (None for images).
"""
import glob
import math
import os
from pathlib import Path

import cv2
import numpy as np

from utils.augment import letterbox  # the same resize + pad as validation, so boxes map back alike
from utils.cli import UserError

IMG_FORMATS = ('bmp', 'dng', 'jpeg', 'jpg', 'mpo', 'png', 'tif', 'tiff', 'webp', 'pfm')
VID_FORMATS = ('asf', 'avi', 'gif', 'm4v', 'mkv', 'mov', 'mp4', 'mpeg', 'mpg', 'ts', 'wmv')
STREAM_PREFIXES = ('rtsp://', 'rtmp://', 'http://', 'https://')


def check_imgsz(imgsz, stride):
    """(h, w) from one or two sizes, each rounded up to a multiple of the model stride."""
    sizes = [int(x) for x in (imgsz if isinstance(imgsz, (list, tuple)) else [imgsz])]
    if len(sizes) not in (1, 2) or min(sizes) <= 0:
        raise UserError(f'--imgsz takes one or two positive sizes (h w), got {imgsz}')
    sizes = sizes * 2 if len(sizes) == 1 else sizes
    fixed = [max(math.ceil(x / stride) * stride, stride) for x in sizes]
    if fixed != sizes:
        print(f'WARNING: --imgsz {sizes} must be a multiple of the max stride {stride}, using {fixed}')
    return fixed


def _suffix(path):
    return Path(path).suffix[1:].lower()


def is_image(path):
    return _suffix(path) in IMG_FORMATS


def is_video(path):
    return _suffix(path) in VID_FORMATS


def _read_path_list(txt):
    """Paths listed one per line in a .txt file; relative ones are taken relative to the file."""
    paths = []
    for line in Path(txt).read_text(errors='ignore').splitlines():
        line = line.strip()
        if line and not line.startswith('#'):
            p = Path(line)
            paths.append(str(p if p.is_absolute() or p.exists() else Path(txt).parent / p))
    return paths


def _expand_one(source):
    """One source string -> list of file paths (folder contents, glob matches, or the file)."""
    s = str(source)
    if s.lower().startswith(STREAM_PREFIXES):
        raise UserError(f'--source {s}: streams and URLs are not supported (no network at run time); '
                         f'download the file first and pass its path')
    if s.isnumeric():
        raise UserError(f'--source {s}: webcams are not supported; pass an image, folder, glob, '
                         f'.txt list or video file')
    if any(c in s for c in '*?['):
        return sorted(glob.glob(s, recursive=True))
    p = Path(s)
    if p.is_dir():
        return sorted(str(f) for f in p.iterdir() if f.is_file())
    if p.is_file():
        return _read_path_list(p) if p.suffix.lower() == '.txt' else [str(p)]
    raise FileNotFoundError(f'--source {s} does not exist (expected an image, a folder, a glob, '
                            f'a .txt list of paths or a video file)')


def collect_files(source):
    """Split a source (or a list of sources) into sorted-per-source image and video paths."""
    sources = source if isinstance(source, (list, tuple)) else [source]
    files = [f for s in sources for f in _expand_one(s)]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f'listed source files do not exist: {missing[:5]}')
    images = [f for f in files if is_image(f)]
    videos = [f for f in files if is_video(f)]
    if not images and not videos:
        raise UserError(f'no images or videos found in --source {source}. Supported formats are\n'
                         f'images: {IMG_FORMATS}\nvideos: {VID_FORMATS}')
    return images, videos


class LoadSources:
    """Iterate images, then videos frame by frame; see the module docstring for what is yielded."""

    def __init__(self, source, img_size=640, stride=32, auto=True, vid_stride=1):
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.stride, self.auto = int(stride), auto
        self.vid_stride = max(int(vid_stride), 1)
        images, videos = collect_files(source)
        self.files = images + videos
        self.video_flag = [False] * len(images) + [True] * len(videos)
        self.nf = len(self.files)
        self.cap, self.frame, self.frames = None, 0, 0
        self.mode = 'image'

    def __len__(self):
        return self.nf

    def __iter__(self):
        self.count = 0
        return self

    def __next__(self):
        while self.count < self.nf:
            path = self.files[self.count]
            if not self.video_flag[self.count]:
                self.count += 1
                return self._image_item(path)
            item = self._next_frame(path)
            if item is not None:
                return item
        raise StopIteration

    def _image_item(self, path):
        self.mode = 'image'
        im0 = cv2.imread(path)
        if im0 is None:
            raise ValueError(f'cannot read image {path} (corrupt file or unsupported encoding)')
        s = f'image {self.count}/{self.nf} {path}: '
        return path, self._to_input(im0), im0, None, s

    def _next_frame(self, path):
        """The next frame of the current video, or None when it is exhausted (moves to the next file)."""
        if self.cap is None:
            self._open_video(path)
        for _ in range(self.vid_stride - 1):
            self.cap.grab()
        ok, im0 = self.cap.read()
        if not ok:
            self.cap.release()
            self.cap = None
            self.count += 1
            return None
        self.frame += 1
        s = f'video {self.count + 1}/{self.nf} ({self.frame}/{self.frames}) {path}: '
        return path, self._to_input(im0), im0, self.cap, s

    def _open_video(self, path):
        self.mode = 'video'
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            raise ValueError(f'cannot open video {path} (codec not supported by this OpenCV build?)')
        self.frame = 0
        self.frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) / self.vid_stride)

    def _to_input(self, im0):
        """Letterbox to the network size and reorder HWC BGR -> CHW RGB (contiguous uint8)."""
        im = letterbox(im0, self.img_size, stride=self.stride, auto=self.auto)[0]
        return np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])
