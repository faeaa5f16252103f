"""Benchmark for mix.py: peak memory of sampling from a parquet source far larger than
what the sample needs, streamed (mix.build_mix) against loading the whole source first.

    python bench/bench_mix.py                   # 2 GB LLaVA-OneVision-style parquet, sample 50,000
    python bench/bench_mix.py --gb 6 --rows 200000

Writes a parquet in the LLaVA-OneVision-Data layout (id, image {bytes, path}, conversations,
data_source; row groups of 1,000 rows) with unique, incompressible ~20 KB images, then runs each approach in
its own process and reports that process's peak resident memory and time. The reference loads
every record (sources.load_source), converts them all and samples with random.sample, as the mix
did before it streamed; both must write byte-identical mixes for a seed. Target: the streamed
mix stays under 1 GB whatever the source's size.
"""
import argparse
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def write_source(path, rows, seed=0, image_kb=20):
    """rows LLaVA-OneVision-style rows with distinct, incompressible images: a small valid PNG
    followed by random bytes (PIL reads only the header; real encoded images do not compress)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = None
    for start in range(0, rows, 1000):
        n = min(rows, start + 1000) - start
        noise = rng.bytes(n * image_kb * 1000)
        batch = [{"id": f"row{i}", "image": {"bytes": png + noise[k * image_kb * 1000:(k + 1) * image_kb * 1000],
                                             "path": f"{i}.png"},
                  "conversations": [{"from": "human", "value": f"<image>\nHow many objects are in scene {i}?"},
                                    {"from": "gpt", "value": str(i % 10)}],
                  "data_source": "bench"} for k, i in enumerate(range(start, start + n))]
        table = pa.Table.from_pylist(batch)
        writer = writer or pq.ParquetWriter(path, table.schema, compression="none")
        writer.write_table(table)
    writer.close()
    return len(png) + image_kb * 1000


def whole_load_mix(spec, out_path, data_root, seed):
    """The reference: every record in memory, converted, then random.sample (the mix before it
    streamed), the same output format and order as mix.build_mix."""
    import mix
    import sources
    out_dir = os.path.dirname(os.path.abspath(out_path))
    img_dir = os.path.join(out_dir, os.path.splitext(os.path.basename(out_path))[0] + "_images")
    samples = []
    for entry in spec["sources"]:
        label = entry.get("label", entry["name"])
        records = sources.load_source(entry["name"], os.path.join(data_root, entry["root"]), entry["split"])
        usable = [s for s in (mix._converted(r, records.report, False, seed) for r in records) if s is not None]
        chosen = random.Random(f"{seed}:{label}").sample(usable, entry["target"])
        samples += [{**mix._materialize(s, out_dir, img_dir), "source": label} for s in chosen]
    random.Random(seed).shuffle(samples)
    with open(out_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)


def run_one(kind, data_root, out_path, target):
    """In a child process: one approach, then its peak RSS and time as JSON on stdout."""
    import mix
    spec = {"seed": 0, "sources": [{"name": "llava_onevision", "root": "LLaVA-OneVision-Data", "split": "train",
                                    "target": target}]}
    t0 = time.perf_counter()
    if kind == "stream":
        mix.build_mix(spec, out_path, data_root=data_root, log=lambda *a: None)
    else:
        whole_load_mix(spec, out_path, data_root, 0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB -> GB
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_gb": peak}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="approximate size of the parquet source")
    ap.add_argument("--rows", type=int, default=0, help="rows of the source (default: from --gb)")
    ap.add_argument("--target", type=int, default=50000, help="rows to sample")
    ap.add_argument("--run", choices=["stream", "whole"], help=argparse.SUPPRESS)
    ap.add_argument("--data-root", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        return run_one(args.run, args.data_root, args.out, args.target)
    work = tempfile.mkdtemp(prefix="bench_mix_")
    try:
        path = os.path.join(work, "data", "LLaVA-OneVision-Data", "bench", "train-00000-of-00001.parquet")
        rows = args.rows or int(args.gb * 1e9 / 20_000)
        t0 = time.perf_counter()
        per_image = write_source(path, rows)
        size = os.path.getsize(path) / 1e9
        print(f"source: {rows:,} rows, {per_image / 1e3:.0f} KB images, {size:.2f} GB parquet "
              f"(written in {time.perf_counter() - t0:.0f} s); sampling {args.target:,}")
        print("| approach | peak RSS | time |\n| --- | --- | --- |")
        results, outs = {}, {}
        for kind in ("stream", "whole"):
            outs[kind] = os.path.join(work, kind, "mix.jsonl")
            os.makedirs(os.path.dirname(outs[kind]))
            done = subprocess.run([sys.executable, __file__, "--run", kind, "--data-root", os.path.join(work, "data"),
                                   "--out", outs[kind], "--target", str(args.target)],
                                  capture_output=True, text=True, check=True)
            results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
            name = "streamed (mix.build_mix)" if kind == "stream" else "whole load, then random.sample"
            print(f"| {name} | {results[kind]['peak_gb']:.2f} GB | {results[kind]['seconds']:.0f} s |")
        same = open(outs["stream"], "rb").read() == open(outs["whole"], "rb").read()
        stream, whole = results["stream"]["peak_gb"], results["whole"]["peak_gb"]
        print(f"| ratio whole / streamed | {whole / stream:.1f}x | |")
        print(f"identical output for seed 0: {same}; streamed peak {stream:.2f} GB "
              f"({'under' if stream < 1 else 'NOT under'} the 1 GB target)")
        if not same:
            raise SystemExit("the streamed mix differs from the whole-load reference")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
