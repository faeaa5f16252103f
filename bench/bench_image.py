"""Image preprocessing throughput: ImageProcessor vs transformers' Qwen2VLImageProcessorPil
on the same in-memory images in one run, outputs checked identical first.

    python bench/bench_image.py

Images: the real VQA-RAD radiographs in ../shared/data (if present) plus synthetic images at
sizes typical of the medical VQA sets (PathVQA/SLAKE thumbnails up to large PMC figures), in
colour and gray; gray ones stored as RGB stand for radiographs saved as RGB JPEG/PNG, the
common case in radiology sets. Budget: max_pixels 262144 (the paper's). Each image is processed
by its own call, the way a dataset's __getitem__ uses the processor; time is the best of several
repeats, in CPU time. Summary lines are given for gray and colour sets apart, as the processor
resizes a gray picture as one band and a colour one as three.

The `bound` column is the best ratio any bit-identical processor could reach on a set: the
reference's time over the time of the one step such a processor cannot skip, PIL's bicubic
resize to the budgeted size (of one band for a gray picture, of the RGB image for a colour
one; reading, testing and normalizing pixels come on top, so the true limit is lower).
"""
import glob
import os
import sys
import time
import warnings

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from image_processor import ImageProcessor  # noqa: E402

SHARED = os.environ.get("INFIMED_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


def synthetic(h, w, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x ^ y) % 256], -1)
    a = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(a).convert(mode)


def best_times(fns, images, repeats):
    """Best-of-`repeats` CPU ms per image for each function, timed alternately. CPU time
    (time.process_time; both run single-threaded) keeps other processes on a shared machine
    from skewing the ratio."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t = time.process_time()
            for im in images:
                fn(im)
            best[k] = min(best[k], time.process_time() - t)
    return [b / len(images) * 1000 for b in best]


def main(repeats=7):
    warnings.filterwarnings("ignore")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    ref = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=262144)
    ours = ImageProcessor(min_pixels=3136, max_pixels=262144)
    sets = {
        "224x224 RGB": [synthetic(224, 224, seed=i) for i in range(8)],
        "512x512 gray": [synthetic(512, 512, "L", seed=i) for i in range(8)],
        "640x480 RGB": [synthetic(480, 640, seed=i) for i in range(8)],
        "1024x1024 RGB": [synthetic(1024, 1024, seed=i) for i in range(4)],
        "2000x1500 RGB": [synthetic(1500, 2000, seed=i) for i in range(2)],
        "1024x1024 gray RGB": [synthetic(1024, 1024, "L", seed=i).convert("RGB") for i in range(4)],
        "2000x1500 gray RGB": [synthetic(1500, 2000, "L", seed=i).convert("RGB") for i in range(2)],
    }
    real = sorted(glob.glob(os.path.join(SHARED, "vqa_rad", "images", "*.jpg")))
    if real:
        sets["VQA-RAD (real)"] = [Image.open(p).convert("RGB") for p in real]
    for ims in sets.values():
        for im in ims:
            im.load()
    rows = []
    for name, ims in sets.items():
        diff = 0.0
        for im in ims:
            a = ref(im, return_tensors="pt")
            pv, grid = ours(im)
            assert torch.equal(grid, a["image_grid_thw"]) and torch.equal(pv, a["pixel_values"]), name
            diff = max(diff, float((pv - a["pixel_values"]).abs().max()))
        rgb = [np.asarray(im.convert("RGB")) for im in ims]  # a set is gray if every image is
        kind = "gray" if all((a == a[..., :1]).all() for a in rgb) else "colour"
        # the unavoidable step, on inputs prepared outside the timing (see the module docstring)
        inputs = {id(im): (im.getchannel(0) if kind == "gray" else im.convert("RGB"),
                           ours.target_size(im.height, im.width)[::-1]) for im in ims}

        def resize_only(im):
            src, size = inputs[id(im)]
            return src.resize(size, resample=Image.BICUBIC) if size != src.size else src
        t_ref, t_ours, t_floor = best_times([lambda im: ref(im, return_tensors="pt"), ours, resize_only], ims,
                                            repeats)
        rows.append((name, len(ims), t_ref, t_ours, t_floor, diff, kind))
    print(f"{'images':<19}{'n':>3}{'transformers ms':>17}{'ours ms':>9}{'ratio':>7}{'resize ms':>11}{'bound':>7}"
          f"{'max|diff|':>11}   (CPU ms per image)")

    def bound(t_ref, t_floor):  # no resize needed: no bound from it
        return f"{t_ref / t_floor:>6.1f}x" if t_floor > 0.02 * t_ref else f"{'-':>7}"
    for name, n, t_ref, t_ours, t_floor, diff, _ in rows:
        print(f"{name:<19}{n:>3}{t_ref:>17.2f}{t_ours:>9.2f}{t_ref / t_ours:>6.1f}x{t_floor:>11.2f}"
              f"{bound(t_ref, t_floor)}{diff:>11.1e}")
    for kind in ("gray", "colour", "all"):
        sel = [r for r in rows if kind in ("all", r[6])]
        n = sum(r[1] for r in sel)
        t_ref, t_ours, t_floor = (sum(r[1] * r[k] for r in sel) / n for k in (2, 3, 4))
        print(f"{kind + ' (per image)':<22}{t_ref:>17.2f}{t_ours:>9.2f}{t_ref / t_ours:>6.1f}x{t_floor:>11.2f}"
              f"{bound(t_ref, t_floor)}")


if __name__ == "__main__":
    main()
