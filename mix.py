"""The SFT mix of the paper's Table 2, from the datasets as their publishers distribute them
(sources.py reads each one), and the conversion of one dataset split to ShareGPT JSONL.

    python mix.py build --data-root data -o sft/mix.jsonl --seed 0            # Table 2
    python mix.py build SPEC.json -o sft/mix.jsonl                             # your own spec
    python mix.py convert --source vqa_rad --root data/VQA_RAD --split train -o vqa_rad.jsonl

A spec is {"seed", "augment", "sources": [{"name", "root", "split", "target", "label", "kw"}]}:
`target` records drawn at random from the entry's usable records (None: all of them), read in
two streamed passes so memory does not grow with the source (bench/bench_mix.py). The output is
one shuffled JSONL, embedded images written once under <out stem>_images/, and
<out stem>.report.json with rows, usable, used and every skip by reason per source.
"""
import hashlib
import json
import os
import random

import click
from tqdm import tqdm

from prompts import split_options
from sources import NAMES, _jsonl, image_bytes, iter_source, to_sharegpt
from tally import Tally


# ----------------------------------------------------------------------------- the SFT mix
# Table 2 of the paper (~150k), from the datasets as downloaded. Roots are relative to
# --data-root. target None = every usable item, used where the paper's count is the whole
# training split: SLAKE train has 9,835 items in both languages (~9k), VQA-RAD train 1,797
# (~1.7k), PathVQA train 19,654 (~19k). Table 2's ~3k PMC-VQA reasoning set is made after the
# mix by `curate.py cot` (a teacher writes it) and joined by `curate.py merge`. Instructions
# stay canonical here (the evaluation prompts); `curate.py augment` varies them later.
TABLE2 = {
    "seed": 0,
    "augment": False,
    "sources": [
        {"name": "llava_onevision", "root": "LLaVA-OneVision-Data", "split": "train", "target": 50000},
        {"label": "pmc_vqa_caption", "name": "pmc_vqa", "root": "PMC-VQA", "split": "train",
         "target": 40000, "kw": {"subset": "caption"}},
        {"name": "pmc_vqa", "root": "PMC-VQA", "split": "train", "target": 20000},
        {"name": "path_vqa", "root": "PathVQA", "split": "train", "target": None},
        {"name": "slake", "root": "SLAKE", "split": "train", "target": None, "kw": {"lang": None}},
        {"name": "vqa_rad", "root": "VQA_RAD", "split": "train", "target": None},
        {"name": "gmai_reasoning", "root": "GMAI-Reasoning10K", "split": "train", "target": 7000},
    ],
}


def _read_sharegpt_file(path, report):
    """ShareGPT JSONL passthrough (a spec entry with name "sharegpt"): image paths relative to
    the file; other keys of the line (id, original, ...) are kept."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ShareGPT file {path!r} not found (a spec entry of name 'sharegpt' "
                                "reads a file that an earlier step wrote)")
    for i, r in _jsonl(path, report):
        try:
            msgs = r["messages"]
            images = [os.path.join(os.path.dirname(path), p) for p in r.get("images", [])]  # abs stays
            assert sum(m["content"].count("<image>") for m in msgs) == len(images)
        except (KeyError, TypeError, AssertionError):
            report.count("not a ShareGPT line with matching <image> tags", example=i); continue
        yield {**{k: v for k, v in r.items() if k not in ("source",)}, "messages": msgs, "images": images}


def _samples(entry, root, report, augment, seed):
    """(position, ShareGPT sample) for every usable record of a spec entry, in reading order.
    Records that do not convert or whose image files are missing are counted in report (the
    missing path as the example). Each sample keeps the record's id, its original question and
    options (what decontamination compares after later steps rewrite the prompt) and, for
    image-caption records, task "caption"."""
    if entry["name"] == "sharegpt":
        samples = _read_sharegpt_file(root, report)
    else:
        records = iter_source(entry["name"], root, entry.get("split", "train"), report, **entry.get("kw", {}))
        samples = (_converted(r, report, augment, seed) for r in records)
    pos = 0
    for s in samples:
        if s is None:
            continue
        missing = next((p for p in s["images"] if isinstance(p, str) and not os.path.exists(p)), None)
        if missing is not None:
            report.count("missing image file", example=missing); continue
        yield pos, s
        pos += 1


def _converted(record, report, augment, seed):
    try:
        sample = to_sharegpt(record, augment=augment, seed=seed)
    except (KeyError, ValueError, IndexError) as e:
        report.count(f"cannot convert: {type(e).__name__}", example=record["id"])
        return None
    question, options = record["question"], record.get("options")
    if options is None:  # a conversational record's question may carry its option lines
        question, options = split_options(question)
    sample.update(id=record["id"], original={"question": question, "options": options})
    if (record.get("meta") or {}).get("task") == "caption":
        sample["task"] = "caption"
    return sample


def _materialize(sample, out_dir, img_dir):
    """Embedded images -> files named by content hash (written once) under img_dir."""
    paths = []
    for im in sample["images"]:
        if not isinstance(im, str):
            data, ext = image_bytes(im)
            im = os.path.join(img_dir, hashlib.sha1(data).hexdigest() + ext)
            if not os.path.exists(im):
                os.makedirs(img_dir, exist_ok=True)
                with open(im + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(im + ".tmp", im)
        im = os.path.abspath(im)  # relative only when inside the output folder (portable with it)
        paths.append(os.path.relpath(im, out_dir) if im.startswith(out_dir + os.sep) else im)
    return {**sample, "images": paths}


def sample_source(entry, label, root, seed, augment, keep):
    """The chosen samples of one spec entry, and its Tally. target None (or at least the
    usable count) takes every usable sample in one pass. Otherwise two passes: the first counts
    the usable samples, random.Random(f"{seed}:{label}").sample picks positions among them (the
    same picks random.sample makes from the full list), the second keeps only those, so memory
    holds one batch of rows plus the chosen samples, whatever the source's size. keep(sample)
    turns a chosen sample into what is stored (images written to disk)."""
    report = Tally(f"{entry['name']}/{entry.get('split', 'train')}")
    target = entry.get("target")
    first = tqdm(_samples(entry, root, report, augment, seed), desc=label, leave=False)
    if target is None:
        return [keep(s) for _, s in first], report
    usable = sum(1 for _ in first)
    picks = range(usable) if target >= usable else random.Random(f"{seed}:{label}").sample(range(usable), target)
    slot = {p: k for k, p in enumerate(picks)}
    chosen = [None] * len(slot)
    second = _samples(entry, root, Tally(report.name), augment, seed)
    for pos, s in tqdm(second, desc=f"{label} (sample)", total=usable, leave=False):
        if pos in slot:
            chosen[slot[pos]] = keep(s)
    return chosen, report


def build_mix(spec, out_path, data_root=".", seed=None, log=print):
    """spec -> one shuffled ShareGPT JSONL at out_path (deterministic for a seed) + report dict.
    Embedded images are written once to <out stem>_images/<sha1>.<ext> and referenced relative
    to the output file's folder; images on disk are referenced by absolute path."""
    seed = spec.get("seed", 0) if seed is None else seed
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.splitext(out_path)[0] + ".report.json", "w") as f:  # until the mix is complete
        json.dump({"complete": False}, f)
    img_dir = os.path.join(out_dir, os.path.splitext(os.path.basename(out_path))[0] + "_images")
    samples, report = [], {"seed": seed, "sources": {}}
    labels = [e.get("label", e["name"]) for e in spec["sources"]]
    if len(set(labels)) != len(labels):
        raise ValueError(f"spec entries need distinct labels (give repeated sources a 'label'): {labels}")
    for entry, label in zip(spec["sources"], labels):
        root = os.path.join(data_root, entry["root"])
        log(f"[mix] {label}: reading {root}")
        try:
            chosen, rep = sample_source(entry, label, root, seed, spec.get("augment", False),
                                        lambda s: {**_materialize(s, out_dir, img_dir), "source": label})
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"spec entry {label!r}: {e} (roots are relative to --data-root)") from e
        samples += chosen
        target = entry.get("target")
        report["sources"][label] = {
            "rows": rep.read, "usable": rep.kept, "target": target, "used": len(chosen),
            "shortfall": max(0, (target or 0) - len(chosen)), "skipped": dict(rep.counts),
            "examples": [f"{row}: {why}" for why, row in rep.examples.items()]}
    random.Random(seed).shuffle(samples)
    with open(out_path + ".tmp", "w", encoding="utf-8") as f:  # atomic: no half-written mix
        f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    os.replace(out_path + ".tmp", out_path)
    report["total"], report["complete"] = len(samples), True
    with open(os.path.splitext(out_path)[0] + ".report.json", "w") as f:
        json.dump(report, f, indent=1)
    return report


def report_table(report):
    """The mix report as a Markdown table."""
    lines = ["| source | rows | usable | target | used | shortfall | skipped |", "|---" * 7 + "|"]
    for label, r in report["sources"].items():
        skipped = "; ".join(f"{k}: {v}" for k, v in r["skipped"].items()) or "-"
        cells = [label, r["rows"], r["usable"], "all" if r["target"] is None else r["target"], r["used"],
                 r["shortfall"], skipped]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines.append(f"| total | | | | {report['total']} | | |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def _json_or_text(value):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@click.group()
def cli():
    """The Table 2 mix and single-dataset conversion to ShareGPT JSONL."""


@cli.command()
@click.option("--source", type=click.Choice(NAMES), required=True)
@click.option("--root", required=True, help="dataset folder (or its annotation file)")
@click.option("--split", default="train", show_default=True)
@click.option("-o", "--out", required=True, help="output ShareGPT JSONL")
@click.option("--augment/--no-augment", default=False, help="vary instruction templates per record")
@click.option("--seed", default=0, show_default=True)
@click.option("--kw", multiple=True,
              help="extra reader argument key=value (value parsed as JSON if it can be)")
def convert(source, root, split, out, augment, seed, kw):
    """Convert one dataset split to ShareGPT JSONL."""
    kwargs = {k: _json_or_text(v) for k, _, v in (item.partition("=") for item in kw)}
    spec = {"seed": seed, "augment": augment, "sources": [
        {"name": source, "root": os.path.abspath(root), "split": split, "target": None, "kw": kwargs}]}
    try:
        report = build_mix(spec, out, data_root="/")
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e))
    click.echo(report_table(report))


@cli.command("build")
@click.argument("spec", required=False)
@click.option("-o", "--out", required=True, help="output ShareGPT JSONL")
@click.option("--data-root", default=None, help="folder the spec's roots are relative to "
              "(default: the spec file's folder, or . for the built-in Table 2 spec)")
@click.option("--seed", default=None, type=int, help="overrides the spec's seed")
def build(spec, out, data_root, seed):
    """Build the SFT mix from SPEC (JSON; default: the paper's Table 2)."""
    spec_dict = json.load(open(spec)) if spec else TABLE2
    root = data_root or (os.path.dirname(os.path.abspath(spec)) if spec else ".")
    try:
        report = build_mix(spec_dict, out, data_root=root, seed=seed)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e))
    click.echo(report_table(report))
    click.echo(f"wrote {report['total']} samples to {out} (report: {os.path.splitext(out)[0]}.report.json)")


if __name__ == "__main__":
    cli()
