"""Image preprocessing throughput: data.ImageProcessor vs transformers' Qwen2VLImageProcessorPil
on the same in-memory images in one run, outputs checked identical first.

    python bench/bench_image.py

Images: the real VQA-RAD radiographs in ../shared/data (if present) plus synthetic images at
sizes typical of the medical VQA sets (PathVQA/SLAKE thumbnails up to large PMC figures), in
colour and gray; gray ones stored as RGB stand for radiographs saved as RGB JPEG/PNG, the
common case in radiology sets. Budget: max_pixels 262144 (the paper's). Each image is processed
by its own call, the way a dataset's __getitem__ uses the processor; time is the best of several
repeats, in CPU time. Summary lines are given for gray and colour sets apart, as the processor
resizes a gray picture as one band and a colour one as three.
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
import data  # noqa: E402

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
    ours = data.ImageProcessor(min_pixels=3136, max_pixels=262144)
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
        t_ref, t_ours = best_times([lambda im: ref(im, return_tensors="pt"), ours], ims, repeats)
        rgb = [np.asarray(im.convert("RGB")) for im in ims]  # a set is gray if every image is
        kind = "gray" if all((a == a[..., :1]).all() for a in rgb) else "colour"
        rows.append((name, len(ims), t_ref, t_ours, t_ref / t_ours, diff, kind))
    print(f"{'images':<19}{'n':>3}{'transformers ms':>17}{'ours ms':>9}{'ratio':>7}{'max|diff|':>11}"
          "   (CPU ms per image)")
    for name, n, t_ref, t_ours, ratio, diff, _ in rows:
        print(f"{name:<19}{n:>3}{t_ref:>17.2f}{t_ours:>9.2f}{ratio:>6.1f}x{diff:>11.1e}")
    for kind in ("gray", "colour", "all"):
        sel = [r for r in rows if kind in ("all", r[6])]
        n = sum(r[1] for r in sel)
        t_ref, t_ours = sum(r[1] * r[2] for r in sel) / n, sum(r[1] * r[3] for r in sel) / n
        print(f"{kind + ' (per image)':<22}{t_ref:>17.2f}{t_ours:>9.2f}{t_ref / t_ours:>6.1f}x")


if __name__ == "__main__":
    main()
