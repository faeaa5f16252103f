"""Tests for image_processor.py: smart_resize and the image processor against transformers'
Qwen2VLImageProcessorPil (the oracle), shape by shape, mode by mode, on real VQA-RAD images too.

    python -m pytest -q tests/test_image_processor.py
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import conftest
from data import image_token_counts
from image_processor import ImageProcessor, _one_band, smart_resize

VQA_RAD_IMAGES = conftest.shared_files("vqa_rad", "images")  # [] on a plain clone


@pytest.fixture(scope="module")
def oracle_cls():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil


def _oracle(cls, images, min_pixels=3136, max_pixels=262144):
    out = cls(min_pixels=min_pixels, max_pixels=max_pixels)(images, return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"]


def picture(h, w, seed=0):
    """A smooth gradient plus noise: bicubic resampling has real work to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) % 256], -1)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def _varied_images():
    """(name, PIL image) in many sizes, modes and aspect ratios."""
    rgb = picture(300, 420)
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=64)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 3
    rgba = np.concatenate([rgb, picture(300, 420, 1)[..., :1]], -1)
    return [
        ("rgb_300x420", Image.fromarray(rgb)),
        ("rgb_large_1500x1100", Image.fromarray(picture(1100, 1500, 2))),
        ("rgb_exact_512", Image.fromarray(picture(512, 512, 3))),
        ("rgb_28x28", Image.fromarray(picture(28, 28, 4))),
        ("rgb_tiny_5x7", Image.fromarray(picture(5, 7, 5))),
        ("rgb_1x1", Image.fromarray(picture(1, 1, 6))),
        ("rgb_tall_aspect_200", Image.fromarray(picture(2000, 10, 7))),
        ("rgb_wide_aspect_150", Image.fromarray(picture(6, 900, 8))),
        ("rgb_odd_333x77", Image.fromarray(picture(333, 77, 9))),
        ("grayscale_L", Image.fromarray(picture(250, 260, 10)[..., 0])),
        ("gray_stored_as_rgb_1024x1024", Image.fromarray(picture(1024, 1024, 13)[..., 0]).convert("RGB")),
        ("LA", Image.fromarray(rgba[..., [0, 3]], "LA")),
        ("RGBA", Image.fromarray(rgba, "RGBA")),
        ("palette", pal),
        ("palette_transparency", pal_t),
        ("bilevel_1", Image.fromarray(picture(90, 120, 11)[..., 0]).convert("1")),
        ("CMYK", Image.fromarray(rgb).convert("CMYK")),
        ("I16_8bit_range", Image.fromarray(picture(100, 140, 12)[..., 0].astype(np.uint16))),
    ]


def _images_for_parity():
    cases = _varied_images()
    cases += [(os.path.basename(p), p) for p in VQA_RAD_IMAGES]
    return cases


# ----------------------------------------------------------------------------- parity

def test_smart_resize_equals_reference_over_many_shapes():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref
    sizes = [1, 2, 13, 27, 28, 29, 55, 56, 57, 100, 223, 224, 333, 500, 511, 512, 513, 999, 1024,
             1500, 2000, 4000]
    for h in sizes:
        for w in sizes:
            if max(h, w) / min(h, w) > 200:
                continue
            for mx in (262144, 12845056, 3136 * 4):
                assert smart_resize(h, w, 28, 3136, mx) == ref(h, w, 28, 3136, mx), (h, w, mx)


def test_smart_resize_refuses_aspect_ratio_over_200_with_clear_error():
    assert smart_resize(10, 2000, max_pixels=262144) == (28, 812)  # exactly 200 is allowed
    with pytest.raises(ValueError, match="aspect ratio 201.0 .*crop or pad"):
        smart_resize(10, 2010)
    with pytest.raises(ValueError, match="aspect ratio"):
        ImageProcessor()(Image.new("RGB", (2010, 10)))


@pytest.mark.parametrize("name,image", _images_for_parity(), ids=lambda v: v if isinstance(v, str) else "")
def test_image_processor_equals_transformers(oracle_cls, name, image):
    ref_pv, ref_grid = _oracle(oracle_cls, Image.open(image) if isinstance(image, str) else image)
    pv, grid = ImageProcessor(min_pixels=3136, max_pixels=262144)(image)
    assert pv.dtype == torch.float32 and grid.dtype == torch.int64
    assert np.array_equal(grid.numpy(), ref_grid)
    assert pv.shape == ref_pv.shape and pv.shape[1] == 1176
    assert np.array_equal(pv.numpy(), ref_pv)  # bit-identical, not merely close


def test_image_processor_equals_transformers_at_hub_default_budget(oracle_cls):
    image = Image.fromarray(picture(700, 950, 20))
    ref_pv, ref_grid = _oracle(oracle_cls, image, max_pixels=12845056)
    pv, grid = ImageProcessor(max_pixels=12845056)(image)
    assert np.array_equal(grid.numpy(), ref_grid) and np.array_equal(pv.numpy(), ref_pv)


@pytest.mark.parametrize("patch,merge,temporal", [(16, 2, 2), (15, 2, 2), (14, 1, 2), (14, 2, 1), (14, 2, 3)])
def test_image_processor_equals_transformers_for_other_patch_geometries(oracle_cls, patch, merge, temporal):
    geometry = dict(patch_size=patch, merge_size=merge, temporal_patch_size=temporal)
    images = [Image.fromarray(picture(300, 517, 21)), Image.fromarray(picture(300, 517, 22)[..., 0])]
    ref = oracle_cls(min_pixels=3136, max_pixels=262144, **geometry)(images, return_tensors="np")
    pv, grid = ImageProcessor(min_pixels=3136, max_pixels=262144, **geometry)(images)
    assert np.array_equal(grid.numpy(), ref["image_grid_thw"]) and np.array_equal(pv.numpy(), ref["pixel_values"])


@pytest.mark.parametrize("shape,y,x,channel", [
    ((700, 900), 3, 450, 1),  # inside the strip checked first
    ((700, 900), 350, 10, 2),  # below it: only the full check sees it
    ((700, 900), 699, 899, 0),  # the last pixel, red differing from green and blue
    ((6, 300), 5, 150, 2),  # too short for a strip
])
def test_gray_as_rgb_is_resized_as_one_band_only_if_every_pixel_agrees(oracle_cls, shape, y, x, channel):
    gray = picture(*shape, seed=30)[..., 0]
    rgb = np.repeat(gray[..., None], 3, -1)
    band = _one_band(Image.fromarray(rgb))
    assert band.mode == "L" and band.tobytes() == gray.tobytes()
    ref_pv, ref_grid = _oracle(oracle_cls, Image.fromarray(rgb))
    pv, grid = ImageProcessor()(Image.fromarray(rgb))
    assert np.array_equal(grid.numpy(), ref_grid) and np.array_equal(pv.numpy(), ref_pv)
    # One channel of one pixel far off: the picture is colour, and resizing its first band
    # instead would give other values, so only the RGB path matches the oracle.
    rgb[y, x, channel] = 0 if rgb[y, x, channel] > 127 else 255
    image = Image.fromarray(rgb)
    assert _one_band(image) is image
    ref_pv, ref_grid = _oracle(oracle_cls, image)
    pv, grid = ImageProcessor()(image)
    assert np.array_equal(grid.numpy(), ref_grid) and np.array_equal(pv.numpy(), ref_pv)
    assert not np.array_equal(pv.numpy(), ImageProcessor()(image.getchannel(0))[0].numpy())


def test_several_images_concatenate_in_order_and_count_tokens(oracle_cls):
    images = [Image.fromarray(picture(h, w, h)) for h, w in [(80, 300), (600, 500), (64, 64)]]
    ref_pv, ref_grid = _oracle(oracle_cls, images)
    proc = ImageProcessor()
    pv, grid = proc(images)
    assert np.array_equal(grid.numpy(), ref_grid) and np.array_equal(pv.numpy(), ref_pv)
    assert image_token_counts(images, proc) == (grid.prod(-1) // 4).tolist()


def test_exif_orientation_is_applied_like_transformers_load_image(oracle_cls, tmp_path):
    path = str(tmp_path / "rotated.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(picture(200, 500, 21)).save(path, exif=exif.tobytes())
    pv, grid = ImageProcessor()(path)
    upright = ImageOps.exif_transpose(Image.open(path))
    ref_pv, ref_grid = _oracle(oracle_cls, upright)
    assert np.array_equal(grid.numpy(), ref_grid) and np.array_equal(pv.numpy(), ref_pv)
    assert np.array_equal(_oracle(oracle_cls, path)[1], ref_grid)  # transformers' path route agrees
    # Deliberate difference: handed the opened PIL image, transformers ignores the EXIF tag.
    assert grid[0, 1] > grid[0, 2] and not np.array_equal(_oracle(oracle_cls, Image.open(path))[1], ref_grid)
    assert torch.equal(ImageProcessor()(Image.open(path))[0], pv)


def test_16bit_image_is_scaled_not_clipped(oracle_cls):
    values = (np.arange(120 * 90).reshape(90, 120) % 4096).astype(np.uint16)  # a 12-bit image
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    eight_bit = Image.fromarray(np.round(values * (255 / 4095)).astype(np.uint8))
    pv, grid = ImageProcessor()(image)
    ref_pv, ref_grid = _oracle(oracle_cls, eight_bit)
    assert np.array_equal(grid.numpy(), ref_grid) and np.array_equal(pv.numpy(), ref_pv)
    # transformers clips every value above 255 to white: most of this image saturates there.
    clipped, _ = _oracle(oracle_cls, image)
    white, _ = _oracle(oracle_cls, Image.new("RGB", image.size, "white"))
    assert (clipped == white).mean() > 0.8 and (pv.numpy() == white).mean() < 0.1


def test_preprocessor_config_round_trips_and_transformers_reads_it(oracle_cls, tmp_path):
    proc = ImageProcessor(min_pixels=3136 * 2, max_pixels=200704)
    proc.save_pretrained(str(tmp_path))
    cfg = json.load(open(tmp_path / "preprocessor_config.json"))
    assert cfg["min_pixels"] == 6272 and cfg["max_pixels"] == 200704
    assert cfg["size"] == {"shortest_edge": 6272, "longest_edge": 200704}
    assert ImageProcessor.from_pretrained(str(tmp_path)) == proc
    theirs = oracle_cls.from_pretrained(str(tmp_path))
    assert (theirs.size["shortest_edge"], theirs.size["longest_edge"]) == (6272, 200704)
    assert (theirs.patch_size, theirs.merge_size, theirs.temporal_patch_size) == (14, 2, 2)
    # and what transformers 5 writes, we read
    oracle_cls(min_pixels=4000, max_pixels=100000).save_pretrained(str(tmp_path / "theirs"))
    back = ImageProcessor.from_pretrained(str(tmp_path / "theirs"))
    assert (back.min_pixels, back.max_pixels) == (4000, 100000)
