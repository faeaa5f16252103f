"""The Qwen2-VL / Qwen2.5-VL image processor: the pixel budget (smart_resize), RGB conversion,
CLIP normalization and the patch layout the vision tower reads, bit-identical to transformers'
Qwen2VLImageProcessor (its PIL implementation). One file with no project imports, to copy alone.

    python -c "from image_processor import smart_resize; print(smart_resize(1024, 768))"
    python -m pytest -q tests/test_image_processor.py   # parity with transformers, shape by shape
    python bench/bench_image.py                          # throughput against transformers
"""
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageChops, ImageOps

# ---- Images: pixel budget, RGB conversion, patches -------------------------------------------
# CLIP normalization constants used by Qwen2-VL / Qwen2.5-VL (preprocessor_config.json
# image_mean / image_std; OpenAI CLIP).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200  # Qwen2-VL smart_resize refuses more extreme images


def smart_resize(height, width, factor=28, min_pixels=3136, max_pixels=12845056):
    """Target (height, width): multiples of `factor` (patch 14 x merge 2 = 28), aspect ratio kept as
    closely as possible, min_pixels <= h*w <= max_pixels. Defaults are the Hub values
    (3136 = 56*56, 12845056 = 28*28*16384); the paper trains with max_pixels 262144 (512*512).
    Rounding is Python's round() (half to even), as in the reference implementation."""
    if min(height, width) <= 0:
        raise ValueError(f"image has an empty side ({height} x {width})")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"image aspect ratio {ratio:.1f} ({height} x {width}) exceeds "
                         f"{MAX_ASPECT_RATIO}, which the Qwen2-VL vision encoder does not accept; "
                         "crop or pad the image to a less extreme shape")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:  # shrink: floor keeps the result inside the budget
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:  # grow: ceil reaches at least min_pixels
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _gray_or_rgb(image):
    """An upright 8-bit image in mode L or RGB; see open_image for the rules."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as f:
            f.load()
            image = f
    if image.getexif().get(0x0112, 1) != 1:  # EXIF Orientation tag; 1 means upright
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        a = np.asarray(image, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError("the image holds non-finite pixel values (inf or nan in a float image)")
        bits = max(8, math.ceil(math.log2(max(float(a.max()), 0.0) + 1)))
        a = np.clip(a, 0, None) * (255.0 / (2 ** bits - 1))  # negative values become 0
        image = Image.fromarray(np.round(a).astype(np.uint8), mode="L")
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode in ("L", "RGB") else image.convert("RGB")


def open_image(image):
    """A PIL image (or a path to one) as an 8-bit RGB PIL image, upright.

    - EXIF orientation is applied, for paths and PIL images alike (transformers' `load_image`
      does it for paths only), so a path and an opened file give the same pixels.
    - Transparency (RGBA, LA, palette with a transparent index) is composited onto white; other
      modes (L, P, CMYK, 1, ...) go through PIL's RGB conversion, as in transformers.
    - 16/32-bit and float images (I;16, I, F: 16-bit PNG/TIFF radiographs) are scaled to 8 bits
      over the smallest 2**k - 1 range (k >= 8) holding their maximum (12-bit: / (4095/255)).
      transformers clips them at 255 instead, turning most of a radiograph white: the one place
      where we deliberately differ."""
    image = _gray_or_rgb(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _one_band(image, probe_rows=8):
    """An RGB image with three identical channels (most radiographs) as its L band, else the
    image itself. A strip of rows is checked first, so a colour picture costs almost nothing."""
    if image.mode != "RGB" or probe_rows and image.height > probe_rows and (
            _one_band(image.crop((0, 0, image.width, probe_rows)), 0).mode == "RGB"):
        return image
    r, g, b = image.split()
    return image if ImageChops.difference(r, g).getbbox() or ImageChops.difference(r, b).getbbox() else r


@dataclass
class ImageProcessor:
    """Qwen2-VL / Qwen2.5-VL image preprocessing: budgeted bicubic resize, CLIP normalization,
    patches of 3 x 2 x 14 x 14 = 1176 values with each 2 x 2 merge group contiguous.

        pixel_values, image_grid_thw = ImageProcessor(max_pixels=262144)(["a.png", pil_image])
    """
    min_pixels: int = 3136  # 56*56, the Hub default
    max_pixels: int = 262144  # 512*512, the paper's budget (at most 334 image tokens)
    patch_size: int = 14  # ViT patch
    temporal_patch_size: int = 2  # a still image is repeated to 2 frames (Conv3d kernel 2x14x14)
    merge_size: int = 2  # the merger joins 2x2 patches into one LLM token
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD

    def __post_init__(self):
        # Lookup table uint8 -> normalized float32, computed the way the reference does it
        # (float64 rescale by 1/255, cast to float32, then (x - mean) / std in float32), so the
        # output is bit-identical rather than merely close.
        x = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
        mean = np.asarray(self.image_mean, np.float32)[:, None]
        std = np.asarray(self.image_std, np.float32)[:, None]
        self._lut = (x[None, :] - mean) / std  # (3, 256) float32

    def target_size(self, height, width):
        return smart_resize(height, width, self.patch_size * self.merge_size,
                            self.min_pixels, self.max_pixels)

    def _resize(self, image):
        """-> (h, w, 1 or 3) uint8 at the budgeted size. Gray pictures are resized as one band:
        PIL resamples each band with the same integer coefficients, so this equals resizing
        the RGB image and copying the band, at under half the cost."""
        image = _one_band(_gray_or_rgb(image))
        h, w = self.target_size(image.height, image.width)
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), resample=Image.BICUBIC)
        return np.asarray(image).reshape(h, w, -1)

    def _patchify(self, pixels, out):
        """Write the patches of one (H, W, 1|3) uint8 image into `out` ((N, 3*T*p*p) float32)."""
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw, bands = pixels.shape[0] // p, pixels.shape[1] // p, pixels.shape[2]
        view, frame = out.reshape(-1, 3, t, p * p), np.empty((gh * gw, p * p), np.float32)
        for c in range(3):
            if c < bands:  # a gray picture's one band serves all three channels
                # (block row, row in block, py, block col, col in block, px) -> (patch, p*p)
                x = pixels[:, :, c].reshape(gh // m, m, p, gw // m, m, p).transpose(0, 3, 1, 4, 2, 5)
                idx = x.astype(np.intp, order="C").reshape(-1, p * p)  # else take converts per call
            # normalize; contiguous `out` and mode != "raise" keep take unbuffered (indices < 256)
            np.take(self._lut[c], idx, out=frame, mode="wrap")
            view[:, c] = frame[:, None]  # every temporal frame is the same picture

    def __call__(self, images):
        """`images`: a PIL image, a path, or a list of them. Returns (pixel_values float32
        [sum of h*w/196, 1176], image_grid_thw int64 [n_images, 3]) as torch tensors."""
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        arrays = [self._resize(im) for im in images]
        p = self.patch_size
        grids = [(1, a.shape[0] // p, a.shape[1] // p) for a in arrays]
        sizes = [g[1] * g[2] for g in grids]
        out = np.empty((sum(sizes), 3 * self.temporal_patch_size * p * p), np.float32)
        for a, start, n in zip(arrays, np.cumsum([0] + sizes), sizes):
            self._patchify(a, out[start:start + n])
        return torch.from_numpy(out), torch.tensor(grids, dtype=torch.int64).reshape(-1, 3)

    def save_pretrained(self, out_dir):
        """Write preprocessor_config.json with the field names the Hub files and transformers 5
        use (min_pixels/max_pixels as in Qwen2.5-VL checkpoints, plus transformers 5's `size`)."""
        os.makedirs(out_dir, exist_ok=True)
        cfg = {
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
            "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "do_convert_rgb": True,  # resample 3 = PIL bicubic
            "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size, "image_mean": list(self.image_mean),
            "image_std": list(self.image_std)}
        with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """Read preprocessor_config.json (ours or a Hub checkpoint's). As in transformers,
        explicit min_pixels/max_pixels take precedence over size.shortest_edge/longest_edge."""
        cfg_path = os.path.join(path, "preprocessor_config.json") if os.path.isdir(path) else path
        with open(cfg_path) as f:
            cfg = json.load(f)
        size = cfg.get("size") or {}
        kw = {"min_pixels": cfg.get("min_pixels", size.get("shortest_edge", cls.min_pixels)),
              "max_pixels": cfg.get("max_pixels", size.get("longest_edge", cls.max_pixels))}
        kw.update({k: cfg[k] for k in ("patch_size", "temporal_patch_size", "merge_size") if k in cfg})
        kw.update({k: tuple(cfg[k]) for k in ("image_mean", "image_std") if k in cfg})
        return cls(**{**kw, **overrides})
