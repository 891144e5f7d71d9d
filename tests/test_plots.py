"""Batch mosaics: a -seg model's masks are painted in their class colour under the boxes."""
import cv2
import numpy as np
import pytest

from utils.plots import MIN_PLOT_CONF, colors, plot_images


def _plot(tmp_path, targets, masks):
    images = np.zeros((1, 3, 64, 64), np.uint8)
    path = plot_images(images, np.array(targets, np.float32), fname=tmp_path / "b.jpg", names=["a", "b"],
                       masks=masks)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(int)


def test_label_masks_are_blended_in_the_class_colour(tmp_path):
    mask = np.zeros((1, 16, 16), bool)
    mask[0, 4:12, 2:6] = True  # a 1/4-resolution mask: pixels 16-48 x 8-24 of the 64 px image
    out = _plot(tmp_path, [[0, 1, 0.5, 0.5, 0.9, 0.9]], mask)
    expected = np.array(colors(1)) * 0.5
    assert np.abs(out[32, 16] - expected).max() <= 12  # inside the mask, away from lines (JPEG tolerance)
    assert out[32, 40].max() <= 12  # beside it: the black image


def test_predicted_masks_below_the_plot_confidence_are_not_drawn(tmp_path):
    mask = np.ones((2, 64, 64), bool)
    out = _plot(tmp_path, [[0, 0, 32, 32, 60, 60, MIN_PLOT_CONF / 2]] * 2, mask)
    assert out[32, 32].max() <= 12
    with pytest.raises(ValueError, match="1 masks for 2 target rows"):
        _plot(tmp_path, [[0, 0, 32, 32, 60, 60, 0.9]] * 2, mask[:1])
