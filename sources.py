"""Dataset readers, one per dataset of the paper in the layout its publisher distributes, and the
conversion of a record to ShareGPT (with instruction augmentation). mix.py builds the Table 2 mix
from them and converts whole splits (`python mix.py convert ...`).

    python -c "import sources; print(sources.load_source('vqa_rad', 'data/VQA_RAD', 'test')[0])"

`iter_source(name, root, split, report)` streams one dataset from its raw distributed format as
plain records (`load_source` returns them as a list):

    {"id": str, "question": str, "answer": str, "options": {"A": text, ...} | None,
     "images": [path | PIL.Image, ...], "meta": {...source fields...},
     "conversations": [{"from", "value"}, ...]   # only for already-conversational sources}

A multiple-choice `answer` is the option letter (meta["answer_text"]: its text). Reading never
opens an image file (a missing one is counted when the record is used, e.g. by `mix`); images
embedded in parquet/TSV become PIL images decoded lazily. Malformed rows are skipped and counted
by reason in the reader's `report` (a Tally); nothing is dropped silently. Each reader's
docstring names the layout it expects and where its publisher documents it (PUBLISHED).
"""
import ast
import base64
import csv
import glob
import hashlib
import io
import json
import os
import pickle
import re
import sys

from PIL import Image
from tqdm import tqdm

from prompts import INSTRUCTIONS, LETTERS, format_options
from tally import Tally

NAMES = ("vqa_rad", "slake", "path_vqa", "pmc_vqa", "mmmu", "gmai_mmbench", "gmai_reasoning",
         "llava_onevision", "synthetic")
# MMMU's "Health & Medicine" discipline = these five subjects (MMMU paper, Table 9); 30
# validation items each = the 150 items the paper evaluates.
HEALTH_MEDICINE = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                   "Pharmacy", "Public_Health")
# All 30 subjects, one hub config (and download folder) each: how a row's subject is recognised.
MMMU_SUBJECTS = ("Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory",
                 "Basic_Medical_Science", "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design",
                 "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power", "Finance",
                 "Geography", "History", "Literature", "Manage", "Marketing", "Materials", "Math",
                 "Mechanical_Engineering", "Music", "Pharmacy", "Physics", "Psychology", "Public_Health", "Sociology")
# Where each dataset is published, and what to download: every "not found" error quotes this.
PUBLISHED = {
    "vqa_rad": "https://osf.io/89kps/ ('VQA_RAD Dataset Public.json' and 'VQA_RAD Image Folder/')",
    "slake": "https://huggingface.co/datasets/BoKelvin/SLAKE (train.json, validate.json, test.json, "
             "imgs.zip unpacked to imgs/)",
    "path_vqa": "https://huggingface.co/datasets/flaviagiammarino/path-vqa (data/<split>-*.parquet), or "
                "the original release's qas/<split>/<split>_qa.pkl with images/<split>/",
    "pmc_vqa": "https://huggingface.co/datasets/xmcmic/PMC-VQA (train.csv, test.csv, test_clean.csv, "
               "images.zip unpacked to images/; train_2.csv, test_2.csv, images_2.zip unpacked to "
               "images_2/figures/)",
    "mmmu": "https://huggingface.co/datasets/MMMU/MMMU (<Subject>/<split>-*.parquet)",
    "gmai_mmbench": "https://huggingface.co/datasets/OpenGVLab/GMAI-MMBench (GMAI_mm_bench_VAL.tsv, "
                    "GMAI_mm_bench_TEST_part_1..11.tsv) or VLMEvalKit's copy GMAI-MMBench_VAL.tsv",
    "gmai_reasoning": "https://huggingface.co/datasets/General-Medical-AI/GMAI-Reasoning10K "
                      "(reasoning_mcq_sft.jsonl and the images it references)",
    "llava_onevision": "https://huggingface.co/datasets/lmms-lab/LLaVA-OneVision-Data "
                       "(<subset>/train-*.parquet)",
    "synthetic": "demo/synthetic.py (<root>/<split>.jsonl)",
}


# ----------------------------------------------------------------------------- records + report
class Records(list):
    """A list of records that also carries the reader's `report`."""
    report: Tally


def _record(id, question, answer, images, meta, options=None, **extra):
    return {"id": str(id), "question": question, "answer": answer, "options": options,
            "images": images, "meta": meta, **extra}


def _open_embedded(data):
    """A lazily decoded PIL image from encoded bytes (only the header is parsed now), or None
    when the bytes are not an image. The bytes ride along for `image_bytes`."""
    try:
        im = Image.open(io.BytesIO(data))
    except Exception:
        return None
    im.encoded_bytes = data
    return im


def image_bytes(im):
    """(bytes, extension) of an image: the original encoding when known, else PNG."""
    data = getattr(im, "encoded_bytes", None)
    if data is not None:
        ext = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp"}.get(im.format)
        if ext:
            return data, ext
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue(), ".png"


def _parquet_rows(paths, source, needed, batch_size=64):
    """(path, row dict) for every row, a batch at a time: memory holds one batch of rows and one
    row group, never the file. Each file must have the needed columns. Row groups are asked for
    one at a time: iter_batches over all of them pre-buffers every row group first, which holds
    the whole file in memory (bench/bench_mix.py measures it)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading parquet files needs pyarrow: pip install pyarrow") from e
    for path in tqdm(paths, desc="parquet files", unit="file", leave=False, disable=len(paths) < 2):
        f = pq.ParquetFile(path)
        _require_columns(path, f.schema_arrow.names, needed, source)
        for group in range(f.num_row_groups):
            for batch in f.iter_batches(batch_size=batch_size, row_groups=[group]):
                yield from ((path, row) for row in batch.to_pylist())


OUTSIDE = "image path outside the dataset folder"


class PathOutside(ValueError):
    """An image path in a dataset file that leads out of the dataset's folder."""


def _inside(folder, rel):
    """folder/rel, refused (PathOutside) when rel is absolute or climbs out of folder with '..':
    a downloaded dataset file must not pull arbitrary local files into training. (A user's own
    training JSONL, read by data.py, may use absolute paths.)"""
    path = os.path.normpath(os.path.join(folder, str(rel)))
    if os.path.isabs(str(rel)) or not path.startswith(os.path.normpath(folder) + os.sep):
        raise PathOutside(f"image path {rel!r} leads outside {folder!r}")
    return path


def _hf_image(value, root):
    """An HF `Image` feature cell ({"bytes", "path"}) -> lazy PIL image, a path inside root, or
    None (PathOutside for a path leading out of root)."""
    if isinstance(value, dict):  # embedded bytes win over the path
        value = value.get("bytes") or value.get("path")
    if not value:
        return None
    if isinstance(value, (bytes, bytearray)):
        return _open_embedded(bytes(value))
    return _inside(root, value)


def _missing(source, root, what):
    return FileNotFoundError(f"{source}: {what} not found under {root!r}. Expected the layout as "
                             f"published at {PUBLISHED[source]}; point --root (or the spec's root) at "
                             "that folder")


def _find(source, root, *names):
    """First existing candidate under root (root may itself be the file)."""
    if os.path.isfile(root):
        return root
    found = next((p for p in (os.path.join(root, n) for n in names) if os.path.exists(p)), None)
    if found is None:
        raise _missing(source, root, " or ".join(repr(n) for n in names))
    return found


def _first_dir(base, *names):
    """The first of base/<name> that is a folder (else the first name: its missing files are
    counted, with their paths, by whoever opens them)."""
    return next((os.path.join(base, n) for n in names if os.path.isdir(os.path.join(base, n))),
                os.path.join(base, names[0]))


def _require_columns(path, found, needed, source):
    lost = [c for c in needed if c not in (found or [])]
    if lost:
        raise ValueError(f"{path}: missing column(s) {lost}; found {list(found or [])}, expected at least "
                         f"{list(needed)} (the layout published at {PUBLISHED[source]})")


def _jsonl(path, report):
    """(line index, object) per non-blank line of a JSONL file, each counted in report.read; a
    line that is not a JSON object is skipped and counted."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            report.read += 1
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                r = None
            if isinstance(r, dict):
                yield i, r
            else:
                report.count("not a JSON object line", example=i)


def _pick(table, split, source):
    if split not in table:
        raise ValueError(f"{source} has no split {split!r}; use one of {sorted(table)}")
    return table[split]


def _split_files(source, root, split, ext="parquet"):
    """HF hub layout: <root>/**/<split>-00000-of-0000N.<ext> (validation may be 'val')."""
    alias = {"val": "validation", "valid": "validation"}.get(split, split)
    files = sorted(set(glob.glob(os.path.join(root, "**", f"{alias}-*.{ext}"), recursive=True)
                       + glob.glob(os.path.join(root, "**", f"{alias}.{ext}"), recursive=True)))
    if not files:
        raise _missing(source, root, f"{alias}-*.{ext} files")
    return files


# ----------------------------------------------------------------------------- readers
# Each reader is a generator: records come one at a time, so the mix can sample a source far
# larger than memory. Rows are counted in report.read and every skipped row by its reason
# (report.count, the row as its example).
def _qa_json(source, path, img_dir, image_key, keep, report):
    """VQA-RAD and SLAKE: a JSON list of {qid, question, answer, <image_key>, ...} rows, of which
    those with keep(row) true belong to the split. Whitespace around meta strings is stripped."""
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    for i, r in enumerate(rows):
        if not keep(r):
            continue
        report.read += 1
        if not str(r.get("question", "")).strip() or r.get("answer") is None or not r.get(image_key):
            report.count(f"missing question, answer or {image_key}", example=i); continue
        meta = {k: (v.strip() if isinstance(v, str) else v) for k, v in r.items()
                if k not in ("question", "answer")}
        try:
            image = _inside(img_dir, r[image_key])
        except PathOutside:
            report.count(OUTSIDE, example=i); continue
        yield _record(f"{source}-{r['qid']}", r["question"].strip(), str(r["answer"]).strip(), [image], meta)


def read_vqa_rad(root, split, report):
    """VQA-RAD as released on OSF (https://osf.io/89kps/): 'VQA_RAD Dataset Public.json' (a list
    of {qid, image_name, image_organ, question, answer, answer_type, phrase_type, ...}) and the
    images in 'VQA_RAD Image Folder/' (or images/). Split by phrase_type: test = test_freeform +
    test_para (451 items), train = freeform + para (1,797)."""
    path = _find("vqa_rad", root, "VQA_RAD Dataset Public.json")
    base = os.path.dirname(path)
    wanted = _pick({"train": ("freeform", "para"), "test": ("test_freeform", "test_para"),
                    "all": ("freeform", "para", "test_freeform", "test_para")}, split, "vqa_rad")
    yield from _qa_json("vqa_rad", path, _first_dir(base, "VQA_RAD Image Folder", "images"), "image_name",
                        lambda r: r.get("phrase_type") in wanted, report)


def read_slake(root, split, report, lang="en"):
    """SLAKE as published (https://www.med-vqa.com/slake/, mirrored at BoKelvin/SLAKE on the HF
    hub): train.json / validate.json / test.json, each a list of {img_id, img_name, question,
    answer, q_lang, answer_type, content_type, modality, ...}; images under imgs/<img_name>.
    `lang` filters q_lang ('en' default; None keeps both English and Chinese)."""
    path = _find("slake", root, _pick({"train": "train.json", "validation": "validate.json", "val": "validate.json",
                                       "validate": "validate.json", "test": "test.json"}, split, "slake"))
    yield from _qa_json("slake", path, os.path.join(os.path.dirname(path), "imgs"), "img_name",
                        lambda r: not lang or r.get("q_lang") == lang, report)


class _PlainUnpickler(pickle.Unpickler):
    """The PathVQA pickles hold only lists/dicts/strings/numbers: refuse any class, so a
    tampered pickle cannot run code."""
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is expected")


def _path_vqa_pickle_rows(root, split):
    s = {"validation": "val"}.get(split, split)
    path = _find("path_vqa", root, f"qas/{s}/{s}_qa.pkl", f"qas/{s}_vqa.pkl", f"{s}_qa.pkl", f"{s}_vqa.pkl")
    with open(path, "rb") as f:
        data = _PlainUnpickler(f).load()
    img_dir = os.path.join(root, "images", s)
    for i, r in enumerate(data):
        name = r.get("image") or r.get("img_id") if isinstance(r, dict) else None
        yield (f"{s}-{r.get('question_id', i) if isinstance(r, dict) else i}", r,
               lambda name=name: _inside(img_dir, name + ".jpg") if name else None)


def read_path_vqa(root, split, report):
    """PathVQA. (1) The HF parquet release (https://huggingface.co/datasets/flaviagiammarino/
    path-vqa, its dataset card: image {bytes, path}, question, answer), files
    <root>/**/<split>-*.parquet; (2) the original pickles, when no parquet is found:
    qas/<split>/<split>_qa.pkl = list of {"image": "train_0422", "question", "answer"}, or
    qas/<split>_vqa.pkl = list of {"img_id", "sent", "label": {answer: score}, "answer_type"};
    images at images/<split>/<image>.jpg. Split names: train, val, test."""
    try:
        files = _split_files("path_vqa", root, split)
        rows = ((f"{split}-{i}", r, lambda r=r: _hf_image(r.get("image"), root))
                for i, (_, r) in enumerate(_parquet_rows(files, "path_vqa", ["image", "question", "answer"])))
    except FileNotFoundError:  # no parquet files: the original pickles
        rows = _path_vqa_pickle_rows(root, split)
    for rid, r, image in rows:
        report.read += 1
        if not isinstance(r, dict):
            report.count("row is not a dict", example=rid); continue
        try:
            img = image()
        except PathOutside:
            report.count(OUTSIDE, example=rid); continue
        q = r.get("question") or r.get("sent")
        a = r.get("answer")
        if a is None and isinstance(r.get("label"), dict) and r["label"]:
            a = max(r["label"], key=r["label"].get)
        if not q or a is None or img is None:
            report.count("missing question, answer or image", example=rid); continue
        a = str(a).strip()
        meta = {"answer_type": r.get("answer_type") or ("yes/no" if a.lower() in ("yes", "no") else "other")}
        yield _record(f"path_vqa-{rid}", str(q).strip(), a, [img], meta)


def _strip_choice(cell, letter):
    """PMC-VQA choice cells carry their letter: 'A:Cardiac', ' B: text' -> the text."""
    return re.sub(rf"^\s*{letter}\s*[:.)]\s*", "", str(cell or "")).strip()


# PMC-VQA files per (split, version), and where each version's figures unpack (dataset card at
# https://huggingface.co/datasets/xmcmic/PMC-VQA; images_2.zip holds a figures/ folder, which
# PMC-VQA users keep as images_2/figures/).
PMC_VQA_FILES = {("train", 1): "train.csv", ("test", 1): "test.csv", ("test_clean", 1): "test_clean.csv",
                 ("train", 2): "train_2.csv", ("test", 2): "test_2.csv"}
PMC_VQA_IMAGES = {1: ("images",), 2: ("images_2/figures", "figures", "images_2")}


def read_pmc_vqa(root, split, report, version=None, subset="vqa"):
    """PMC-VQA (dataset card: https://huggingface.co/datasets/xmcmic/PMC-VQA).
    Version 1 (227k questions on 149k figures): train.csv, test.csv and test_clean.csv (the
    manually validated test set the paper evaluates on), figures from images.zip in images/.
    Columns: Figure_path, Question, Answer (the answer's text; early revisions spell it 'Anwser'),
    Choice A..D (cells carry their letter: 'A:Diffuse uptake'), Answer_label (the letter).
    Version 2 (non-compound figures, with their captions): train_2.csv, test_2.csv, figures
    from images_2.zip in images_2/figures/. Columns: index, Figure_path, Caption, Question,
    Choice A..D, Answer (the letter), split.
    subset='vqa' yields the multiple-choice questions (default version 1, the test_clean
    version); subset='caption' yields one image-caption record per figure (version 2, the
    only one with captions)."""
    version = version or (2 if subset == "caption" else 1)
    if subset == "caption" and version != 2:
        raise ValueError("pmc_vqa captions exist only in version 2 (train_2.csv / test_2.csv)")
    name = _pick({s: f for (s, v), f in PMC_VQA_FILES.items() if v == int(version)}, split, f"pmc_vqa v{version}")
    path = _find("pmc_vqa", root, name)
    img_dir = _first_dir(os.path.dirname(path), *PMC_VQA_IMAGES[int(version)])
    seen = set()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip().replace("Anwser", "Answer") for c in reader.fieldnames or []]
        choice = "A" if "A" in columns and "Choice A" not in columns else "Choice A"
        answer = "Answer_label" if "Answer_label" in columns else "Answer"  # the letter, else the text
        needed = ["Figure_path", "Caption"] if subset == "caption" else ["Figure_path", "Question", answer, choice]
        _require_columns(path, columns, needed, "pmc_vqa")
        for i, row in enumerate(reader):
            row = {k.strip().replace("Anwser", "Answer"): (v or "").strip() for k, v in row.items() if k}
            report.read += 1
            fig = row.get("Figure_path", "")
            if not fig:
                report.count("missing Figure_path", example=i); continue
            rid = row.get("index") or str(i)
            meta = {"figure": fig, "caption": row.get("Caption"), "version": int(version)}
            try:
                image = _inside(img_dir, fig)
            except PathOutside:
                report.count(OUTSIDE, example=i); continue
            if subset == "caption":
                if not row.get("Caption"):
                    report.count("missing Caption", example=i); continue
                if fig in seen:  # one caption per figure, not one per question
                    report.count("duplicate figure", example=i); continue
                seen.add(fig)
                yield _record(f"pmc_caption-{rid}", INSTRUCTIONS["caption"][0], row["Caption"], [image],
                              {**meta, "task": "caption"})
                continue
            options = {L: _strip_choice(row.get(f"Choice {L}", row.get(L)), L) for L in "ABCD"
                       if row.get(f"Choice {L}", row.get(L))}
            raw = row.get("Answer_label") or row.get("Answer", "")
            if re.fullmatch(r"[A-D]\s*([:.)].*)?", raw):  # 'B' or 'B:text'
                label = raw[0]
            else:  # the answer's text: find its letter
                label = next((L for L, t in options.items() if t == _strip_choice(raw, "[A-D]")), None)
            if not row.get("Question") or len(options) < 2 or label not in options:
                report.count("missing question/options or answer not among options", example=i); continue
            yield _record(f"pmc_vqa-{rid}", row["Question"], label, [image],
                          {**meta, "answer_text": options[label]}, options=options)


def _mmmu_subject(rid, path):
    """The MMMU subject of a row: the one its id names ("validation_Clinical_Medicine_1"), else the
    <Subject>/ folder its file sits in (the hub's one config per subject), for re-exports that
    number their ids 0, 1, ...; None when neither names one."""
    named = re.sub(r"^(dev|validation|test)_|_\d+$", "", rid)
    folder = os.path.basename(os.path.dirname(path))
    return next((s for s in (named, folder) if s in MMMU_SUBJECTS), None)


def read_mmmu(root, split, report, subjects=HEALTH_MEDICINE):
    """MMMU parquet as on the HF hub (https://huggingface.co/datasets/MMMU/MMMU, one config per
    subject: <root>/<Subject>/<split>-*.parquet): id, question with <image N> tags, options as
    a Python list literal string, answer, image_1..image_7, question_type, subfield. The <image N>
    tags stay in the text; images are listed in N order. Only rows of `subjects` (all when empty)
    become records; the others under root are counted as skipped, so a root of all 30 subjects
    reads as 150 of 900 validation rows kept."""
    needed = ["id", "question", "options", "answer", "image_1"]
    other = "not a Health & Medicine subject" if set(subjects or ()) == set(HEALTH_MEDICINE) else \
        "not one of the requested subjects"
    for path, r in _parquet_rows(_split_files("mmmu", root, split), "mmmu", needed):
        report.read += 1
        rid = str(r.get("id", ""))
        subject = _mmmu_subject(rid, path)
        if subject is None:
            report.count("subject unknown: neither the id nor the <Subject>/ folder names an MMMU subject",
                         example=f"{path}: {rid}"); continue
        if subjects and subject not in subjects:
            report.count(other, example=rid); continue
        try:
            opts = ast.literal_eval(r.get("options") or "[]")
            assert isinstance(opts, list)
        except Exception:
            report.count("options is not a list literal", example=rid); continue
        text = " ".join([r.get("question") or ""] + [str(o) for o in opts])
        tags = sorted({int(n) for n in re.findall(r"<image (\d+)>", text)})
        try:
            images = [_hf_image(r.get(f"image_{n}"), root) for n in tags]
        except PathOutside:
            report.count(OUTSIDE, example=rid); continue
        if not tags or any(im is None for im in images):
            report.count("an <image N> tag without its image column (or no image)", example=rid); continue
        meta = {k: r.get(k) for k in ("question_type", "subfield", "img_type", "topic_difficulty",
                                      "explanation")}
        meta["subject"] = subject
        answer = str(r.get("answer", "")).strip()
        if opts:
            options = dict(zip(LETTERS, (str(o) for o in opts)))
            if answer not in options:
                report.count("answer letter not among options", example=rid); continue
            meta["answer_text"] = options[answer]
        else:
            options = None  # short-answer item
        yield _record(rid, r.get("question", "").strip(), answer, images, meta, options=options)


# GMAI-MMBench file names: the authors publish GMAI_mm_bench_VAL.tsv and the test set in 11
# parts (OpenGVLab/GMAI-MMBench on the HF hub); VLMEvalKit's mirror names the validation file
# GMAI-MMBench_VAL.tsv (its GMAIMMBenchDataset reads either).
GMAI_FILES = {"validation": ("GMAI_mm_bench_VAL.tsv", "GMAI-MMBench_VAL.tsv"),
              "test": ("GMAI_mm_bench_TEST_part_*.tsv", "GMAI-MMBench_TEST.tsv")}


def _gmai_files(root, split, file=None):
    if file:
        return [_find("gmai_mmbench", root, file)]
    if os.path.isfile(root):
        return [root]
    patterns = _pick({**GMAI_FILES, "val": GMAI_FILES["validation"]}, split, "gmai_mmbench")
    for pattern in patterns:
        parts = glob.glob(os.path.join(root, pattern))
        if parts:  # part_2 before part_10
            return sorted(parts, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)])
    raise _missing("gmai_mmbench", root, " or ".join(patterns))


def read_gmai_mmbench(root, split, report, file=None):
    """GMAI-MMBench TSV as its authors publish it for VLMEvalKit (the GitHub README of
    uni-medical/GMAI-MMBench): index, question, A..E, answer (absent from the test parts), image
    (base64 PNG; a short cell is the index of the row holding the image), and the category
    columns (modality, clinical VQA task, department, perceptual granularity, ...). File names:
    GMAI_FILES. Rows without an answer among their options are skipped (counted)."""
    csv.field_size_limit(sys.maxsize)
    for path in _gmai_files(root, split, file):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            _require_columns(path, reader.fieldnames, ["index", "question", "A", "B", "image"], "gmai_mmbench")
            rows = list(reader)
        by_index = {r.get("index"): r.get("image", "") for r in rows}
        for r in rows:
            report.read += 1
            rid = r.get("index")
            img = r.get("image", "")
            if len(img) < 64 and img in by_index:
                img = by_index[img]
            options = {L: r[L].strip() for L in "ABCDE"
                       if (r.get(L) or "").strip() and r[L].strip().lower() != "nan"}
            answer = (r.get("answer") or "").strip()
            if not r.get("question") or len(options) < 2 or answer not in options:
                report.count("missing question/options or answer not among options", example=rid); continue
            try:
                im = _open_embedded(base64.b64decode(img, validate=True))
            except ValueError:
                im = None
            if im is None:
                report.count("image is not a base64-encoded image", example=rid); continue
            meta = {k: v for k, v in r.items() if k not in ("question", "answer", "image", *"ABCDE")}
            meta["answer_text"] = options[answer]
            yield _record(f"gmai_mmbench-{rid}", r["question"].strip(), answer, [im], meta, options=options)


def _conversation_record(rid, convs, images, meta, report):
    """Shared by the two conversational sources: validate from/value turns and <image> tags."""
    if not isinstance(convs, list) or len(convs) < 2 or any(
            not isinstance(t, dict) or t.get("from") not in ("system", "human", "gpt") or
            not isinstance(t.get("value"), str) for t in convs):
        report.count("conversations are not a list of from/value turns", example=rid); return None
    humans = [t for t in convs if t["from"] == "human"]
    if not humans or convs[-1]["from"] != "gpt":
        report.count("conversation lacks a human turn or does not end with gpt", example=rid); return None
    n_tags = sum(t["value"].count("<image>") for t in convs)
    if n_tags not in (0, len(images)):
        report.count(f"{n_tags} <image> tags for {len(images)} images", example=rid); return None
    if m := re.search(r"<answer>\s*(.*?)\s*</answer>", convs[-1]["value"], re.S):
        meta["final_answer"] = m.group(1)
    question = humans[0]["value"].replace("<image>", "").strip()
    return _record(rid, question, convs[-1]["value"].strip(), images, meta, conversations=convs)


def read_gmai_reasoning(root, split, report, file="reasoning_mcq_sft.jsonl"):
    """GMAI-Reasoning10K (https://huggingface.co/datasets/General-Medical-AI/GMAI-Reasoning10K,
    the SFT file of GMAI-VL-R1): JSONL lines {"image": path (or "images": [...]),
    "conversations": [{"from", "value"}, ...]}; image paths relative to the file. The
    conversation (its reasoning and <answer> tag included) is kept as-is."""
    path = _find("gmai_reasoning", root, file)
    base = os.path.dirname(path)
    for i, r in _jsonl(path, report):
        imgs = r.get("images") or ([r["image"]] if r.get("image") else [])
        meta = {k: v for k, v in r.items() if k not in ("conversations", "image", "images")}
        try:
            paths = [_inside(base, p) for p in imgs]
        except PathOutside:
            report.count(OUTSIDE, example=i); continue
        rec = _conversation_record(f"gmai_reasoning-{r.get('id', i)}", r.get("conversations"), paths, meta, report)
        if rec is not None:
            yield rec


def read_llava_onevision(root, split, report, subsets=None):
    """LLaVA-OneVision-Data parquet as on the HF hub (https://huggingface.co/datasets/lmms-lab/
    LLaVA-OneVision-Data, one config per subset: <root>/<subset>/*.parquet): id, image {bytes,
    path} (null for text-only rows), conversations [{"from", "value"}], data_source."""
    files = sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True))
    if subsets:
        files = [f for f in files if os.path.basename(os.path.dirname(f)) in subsets]
    if not files:
        raise _missing("llava_onevision", root, "*.parquet files")
    for i, (path, r) in enumerate(_parquet_rows(files, "llava_onevision", ["conversations"])):
        report.read += 1
        try:
            img = _hf_image(r.get("image"), root)
        except PathOutside:
            report.count(OUTSIDE, example=r.get("id") or i); continue
        if r.get("image") and img is None:
            report.count("embedded image is not a readable image", example=r.get("id") or i); continue
        meta = {"data_source": r.get("data_source"), "subset": os.path.basename(os.path.dirname(path))}
        rec = _conversation_record(f"llava_ov-{r.get('id') or i}", r.get("conversations"),
                                   [img] if img is not None else [], meta, report)
        if rec is not None:
            yield rec


def read_synthetic(root, split, report):
    """Benchmark records written by demo/synthetic.py (<root>/<split>.jsonl, image paths relative)."""
    for _, r in _jsonl(_find("synthetic", root, f"{split}.jsonl"), report):
        if "messages" in r:
            raise ValueError(f"{root}/{split}.jsonl is ShareGPT training data, not benchmark records: "
                             "use it directly as an SFT file")
        r["images"] = [os.path.join(root, p) for p in r["images"]]
        yield r


READERS = {"vqa_rad": read_vqa_rad, "slake": read_slake, "path_vqa": read_path_vqa, "pmc_vqa": read_pmc_vqa,
           "mmmu": read_mmmu, "gmai_mmbench": read_gmai_mmbench, "gmai_reasoning": read_gmai_reasoning,
           "llava_onevision": read_llava_onevision, "synthetic": read_synthetic}


def iter_source(name, root, split, report, **kw):
    """Stream one dataset from its raw format, one record at a time (counts go to report)."""
    if name not in READERS:
        raise ValueError(f"unknown source {name!r}; expected one of {', '.join(NAMES)}")
    return READERS[name](root, split, report, **kw)


def load_source(name, root, split, **kw):
    """Read one dataset from its raw format -> Records (a list of dicts, with `.report`)."""
    report = Tally(f"{name}/{split}")
    records = Records(iter_source(name, root, split, report, **kw))
    records.report = report
    return records


# ----------------------------------------------------------------------------- ShareGPT conversion
def answer_form(record):
    """'caption', 'choice', 'yesno' or 'open' (the key into INSTRUCTIONS)."""
    if (record.get("meta") or {}).get("task") == "caption":
        return "caption"
    if record.get("options"):
        return "choice"
    return "yesno" if record["answer"].strip().lower() in ("yes", "no") else "open"


def to_sharegpt(record, augment=False, seed=0, with_answer=True, system=None):
    """A record -> the canonical {"messages": [...], "images": [...]} with one `<image>` per image
    before the text (no newline after it: the Qwen template adds none at inference either).
    Conversational records keep their turns (an `<image>` is prepended when the data has none)."""
    images = list(record["images"])
    msgs = [{"role": "system", "content": system}] if system else []
    if record.get("conversations"):
        roles = {"system": "system", "human": "user", "gpt": "assistant"}
        turns = [{"role": roles[t["from"]], "content": t["value"]} for t in record["conversations"]]
        if images and not any("<image>" in t["content"] for t in turns):
            first = next(t for t in turns if t["role"] == "user")
            first["content"] = "<image>" * len(images) + first["content"]
        if not with_answer:
            turns = turns[:-1]
        return {"messages": msgs + turns, "images": images}
    form = answer_form(record)
    templates = INSTRUCTIONS[form]  # augment: a stable per-record pick; else the canonical first
    pick = int(hashlib.sha1(f"{seed}:{record['id']}".encode()).hexdigest(), 16) % len(templates)
    question = record["question"].replace("<image>", "").strip()
    text = templates[pick if augment else 0].format(question=question,
                                                    options=format_options(record.get("options") or {}))
    msgs.append({"role": "user", "content": "<image>" * len(images) + text})
    if with_answer:
        answer = record["answer"].strip()
        msgs.append({"role": "assistant", "content": answer.capitalize() if form == "yesno" else answer})
    return {"messages": msgs, "images": images}
