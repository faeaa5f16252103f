"""Miniatures of the paper's eight training sources and six benchmarks, written in the layouts
their publishers distribute (file names, columns, image encodings), for tests that run the
README's recipe as a user would. Each writer names the layout it copies; sources.py's readers
cite the same publications (sources.PUBLISHED).

    from realformat import write_all
    planted = write_all("data")   # -> the benchmark items copied into training sources

Benchmark items are planted in several training sources, verbatim and reworded (case,
punctuation, a JPEG re-encode of the image), the leaks decontamination must find after every
curation step. Images are smooth random fields (distinct per item, stable under resizing and
JPEG), 64-96 pixels a side.
"""
import base64
import csv
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HEALTH_MEDICINE = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                   "Pharmacy", "Public_Health")


def picture(seed, size=64):
    """A smooth random colour image: a 6x6 random field upsampled (distinct per seed)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return small.resize((size, size + 16 * (seed % 3)), Image.BICUBIC)


def encoded(image, fmt="PNG"):
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=90) if fmt == "JPEG" else image.save(buf, format=fmt)
    return buf.getvalue()


def save(image, path, fmt="JPEG"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(encoded(image, fmt))


def reword(question):
    """A copy a leak detector must still see: other case, other punctuation."""
    return question.upper().rstrip("?") + " ??"


# ---------------------------------------------------------------------------- benchmarks + sources
def write_vqa_rad(root, leak=None):
    """OSF release: one JSON list for all splits, split by phrase_type; images in
    'VQA_RAD Image Folder/'. Returns the first test item (the one planted elsewhere)."""
    rows, folder = [], os.path.join(root, "VQA_RAD", "VQA_RAD Image Folder")
    qa = [("Is there a pneumothorax?", "No", "CLOSED"), ("Which lobe is the mass in?", "right upper lobe", "OPEN"),
          ("Is the heart enlarged?", "Yes", "CLOSED"), ("What imaging modality is this?", "CT", "OPEN")]
    for qid in range(1, 13):
        q, a, kind = qa[qid % 4]
        split = ("test_freeform", "test_para")[qid % 2] if qid > 8 else ("freeform", "para")[qid % 2]
        name = f"synpic{4000 + qid}.jpg"
        save(picture(100 + qid), os.path.join(folder, name))
        rows.append({"qid": qid, "phrase_type": split, "image_name": name, "image_organ": "CHEST",
                     "question": f"{q} (case {qid})", "question_rephrase": "NULL", "question_type": "PRES",
                     "answer": a, "answer_type": kind, "evaluation": "given", "question_relation": "NULL",
                     "qid_linked_id": f"0{qid}2018", "question_frame": "NULL"})
    test_item = dict(rows[8])  # qid 9, a test item: planted reworded as a training row (same image)
    rows.append({**test_item, "qid": 99, "phrase_type": "freeform", "question": reword(test_item["question"])})
    with open(os.path.join(root, "VQA_RAD", "VQA_RAD Dataset Public.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return {"benchmark": "vqa_rad", "question": test_item["question"], "planted_in": "vqa_rad (reworded)"}


def slake_test_item():
    """The first English SLAKE test item (question, image, answer), as write_slake writes it."""
    return {"benchmark": "slake", "question": "Which organ is abnormal in scan 30?", "image": picture(230),
            "answer": "Liver"}


def write_slake(root, leak):
    """SLAKE: train.json / validate.json / test.json (English and Chinese rows), imgs/xmlabN/
    source.jpg. `leak` (a PathVQA test item: question and image) is planted verbatim in
    train.json, its image saved losslessly (the same pixels)."""
    d = os.path.join(root, "SLAKE")
    qid, out = 0, {}
    for split, first in (("train", 0), ("validate", 20), ("test", 30)):
        rows = []
        for k in range(6 if split == "train" else 4):
            img = f"xmlab{first + k}/source.jpg"
            save(picture(200 + first + k), os.path.join(d, "imgs", img))
            for lang, q, a in (("en", f"Which organ is abnormal in scan {first + k}?", "Liver"),
                               ("zh", f"扫描{first + k}中哪个器官异常?", "肝脏")):
                qid += 1
                rows.append({"img_id": first + k, "img_name": img, "question": q, "answer": a, "q_lang": lang,
                             "location": "Abdomen", "modality": "CT", "answer_type": "OPEN", "base_type": "vqa",
                             "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": qid})
        out[split] = rows
    save(leak["image"], os.path.join(d, "imgs", "xmlab900/source.jpg"), "PNG")  # same pixels as the benchmark's
    out["train"].append({"img_id": 900, "img_name": "xmlab900/source.jpg", "question": leak["question"],
                         "answer": leak["answer"], "q_lang": "en", "location": "Cell", "modality": "Pathology",
                         "answer_type": "OPEN", "base_type": "vqa", "content_type": "Abnormality",
                         "triple": ["vhead", "_", "_"], "qid": 9000})
    for split, rows in out.items():
        with open(os.path.join(d, f"{split}.json"), "w", encoding="utf-8") as f:
            json.dump(rows, f, ensure_ascii=False, indent=1)
    first = next(r for r in out["test"] if r["q_lang"] == "en")
    assert first["question"] == slake_test_item()["question"]


def _parquet(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def path_test_item():
    """The second PathVQA test item (question, decoded image, answer), as write_path_vqa writes it."""
    return {"benchmark": "path_vqa", "question": "What is present in section 61?",
            "image": Image.open(io.BytesIO(encoded(picture(361), "JPEG"))).convert("RGB"), "answer": "granuloma"}


def write_path_vqa(root, leak):
    """HF flaviagiammarino/path-vqa: data/<split>-00000-of-00001.parquet with image {bytes,
    path}, question, answer. `leak` (a SLAKE test item) is planted reworded in train, its image
    re-encoded as JPEG."""
    d = os.path.join(root, "PathVQA", "data")
    items = {}
    for split, n, first in (("train", 8, 0), ("validation", 3, 40), ("test", 5, 60)):
        rows = []
        for k in range(n):
            im = picture(300 + first + k)
            yes = k % 2 == 0
            rows.append({"image": {"bytes": encoded(im, "JPEG"), "path": None},
                         "question": f"Is there fibrosis in section {first + k}?" if yes else
                         f"What is present in section {first + k}?",
                         "answer": "yes" if yes else "granuloma"})
        items[split] = rows
    items["train"].append({"image": {"bytes": encoded(leak["image"], "JPEG"), "path": None},
                           "question": reword(leak["question"]), "answer": leak["answer"]})
    for split, rows in items.items():
        _parquet(os.path.join(d, f"{split}-00000-of-00001.parquet"), rows)
    assert items["test"][1]["question"] == path_test_item()["question"]


PMC_V1 = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
PMC_V2 = ["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D", "Answer",
          "split"]
MODALITIES = ["CT", "MRI", "X-ray", "Ultrasound"]


def _pmc_choices(k):
    gold = "ABCD"[k % 4]
    return gold, [f"{L}:{m}" for L, m in zip("ABCD", MODALITIES)]


def write_pmc_vqa(root, leak):
    """HF xmcmic/PMC-VQA. v1: train.csv, test.csv, test_clean.csv (columns PMC_V1: the answer's
    text, 'A:'-prefixed choices, Answer_label), figures in images/. v2: train_2.csv, test_2.csv
    (columns PMC_V2: Caption, the answer's letter, split), figures in images_2/figures/, several
    questions per figure. `leak` (an MMMU item) is planted reworded in train.csv, its image
    re-encoded. Returns the clean test item planted verbatim in train.csv (same file, same
    question), which also reaches the reasoning set."""
    d = os.path.join(root, "PMC-VQA")
    v1 = {"train": [], "test": [], "test_clean": []}
    for split, n, first in (("train", 12, 0), ("test", 4, 50), ("test_clean", 3, 50)):
        for k in range(first, first + n):
            fig = f"PMC{1000 + k}_F1.jpg"
            save(picture(400 + k), os.path.join(d, "images", fig))
            gold, choices = _pmc_choices(k)
            v1[split].append([fig, f"What imaging modality was used for figure {k}?",
                              MODALITIES["ABCD".index(gold)], *choices, gold])
    clean = v1["test_clean"][0]
    v1["train"].append(list(clean))  # verbatim: the same figure file and question
    fig = "PMC9999_F1.jpg"
    save(leak["image"], os.path.join(d, "images", fig))
    v1["train"].append([fig, reword(leak["question"]), leak["options"][leak["answer"]],
                        *[f"{L}:{t}" for L, t in list(leak["options"].items())[:4]], leak["answer"]])
    for split, rows in v1.items():
        _csv(os.path.join(d, f"{split}.csv"), ["Figure_path", "Question", "Anwser" if split == "train" else "Answer",
                                               *PMC_V1[3:]], rows)
    v2 = {"train": [], "test": []}
    index = 0
    for split, figs, first in (("train", 6, 0), ("test", 2, 80)):
        for f in range(first, first + figs):
            fig = f"PMC{2000 + f}_F{f % 3 + 1}.jpg"
            save(picture(500 + f), os.path.join(d, "images_2", "figures", fig))
            caption = (f"Axial contrast-enhanced CT of the abdomen in patient {f} showing a hypodense lesion "
                       f"in the right lobe of the liver, arrow.")
            for q in range(2):  # two questions per figure, one caption
                gold, choices = _pmc_choices(f + q)
                v2[split].append([index, fig, caption if f != first + 1 else "", f"Question {q} on figure {f}?",
                                  *choices, gold, split])
                index += 1
    for split, rows in v2.items():
        _csv(os.path.join(d, f"{split}_2.csv"), PMC_V2, rows)
    return {"benchmark": "pmc_vqa", "question": clean[1], "planted_in": "pmc_vqa (verbatim)"}


def _csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_mmmu(root):
    """HF MMMU/MMMU: one folder per subject, <Subject>/{dev,validation}-00000-of-00001.parquet;
    id, question with <image N> tags, options as a Python list literal, answer, image_1..7
    ({bytes, path}), question_type, subfield, ... Returns a validation item to plant elsewhere."""
    d, first = os.path.join(root, "MMMU"), None
    for s, subject in enumerate(HEALTH_MEDICINE + ("Art",)):
        for split in ("dev", "validation"):
            rows = []
            for k in range(2):
                im = picture(600 + 10 * s + k + (5 if split == "dev" else 0))
                options = ["Hepatitis", "Cirrhosis", "Steatosis", "Carcinoma"]
                row = {"id": f"{split}_{subject}_{k + 1}",
                       "question": f"<image 1> What is the most likely diagnosis for patient {s}-{k}?",
                       "options": str(options), "explanation": "", "answer": "ABCD"[(s + k) % 4],
                       "img_type": "['Pathology']", "topic_difficulty": "Medium", "question_type": "multiple-choice",
                       "subfield": "Pathology"}
                for n in range(1, 8):
                    row[f"image_{n}"] = {"bytes": encoded(im), "path": f"{row['id']}_{n}.png"} if n == 1 else None
                rows.append(row)
                if split == "validation" and first is None:
                    first = {"benchmark": "mmmu", "question": row["question"], "image": im,
                             "options": dict(zip("ABCD", options)), "answer": row["answer"]}
            _parquet(os.path.join(d, subject, f"{split}-00000-of-00001.parquet"), rows)
    return first


GMAI_COLUMNS = ["index", "question", "A", "B", "C", "D", "E", "answer", "image", "category", "l2-category",
                "modality", "clinical VQA task", "department", "perceptual granularity"]


def write_gmai_mmbench(root):
    """OpenGVLab/GMAI-MMBench: GMAI_mm_bench_VAL.tsv, columns GMAI_COLUMNS, images as base64 PNG
    (a short cell is the index of the row holding the image). Returns an item to plant."""
    rows, first = [], None
    for k in range(6):
        im = picture(700 + k)
        options = ["Normal", "Pneumonia", "Tuberculosis", "Edema", "" if k % 2 else "Effusion"]
        image = base64.b64encode(encoded(im)).decode() if k != 5 else "4"  # row 5 reuses row 4's image
        rows.append([k, f"What does chest radiograph {k} show?", *options, "B", image, "Disease Diagnosis",
                     "Lung", "X-Ray", "Disease Diagnosis", "Pulmonary Medicine", "image level"])
        if first is None:
            first = {"benchmark": "gmai_mmbench", "question": rows[0][1], "image": im,
                     "options": dict(zip("ABCDE", options)), "answer": "B"}
    d = os.path.join(root, "GMAI-MMBench")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "GMAI_mm_bench_VAL.tsv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(GMAI_COLUMNS)
        w.writerows(rows)
    return first


def write_gmai_reasoning(root):
    """General-Medical-AI/GMAI-Reasoning10K: reasoning_mcq_sft.jsonl lines {"image": relative
    path, "conversations": [human question with options, gpt reasoning + <answer>X</answer>]}."""
    d = os.path.join(root, "GMAI-Reasoning10K")
    lines = []
    for k in range(5):
        rel = f"images/dermoscopy/{k:05d}.png"
        save(picture(800 + k), os.path.join(d, rel), "PNG")
        gold = "AB"[k % 2]
        lines.append({"id": f"derm_{k}", "image": rel, "conversations": [
            {"from": "human", "value": f"<image>\nWhich lesion is shown in dermoscopy {k}?\nA. Nevus\nB. Melanoma"},
            {"from": "gpt", "value": f"<think>The pigment network is {'regular' if gold == 'A' else 'atypical'}."
                                     f"</think>\n<answer>{gold}</answer>"}]})
    with open(os.path.join(d, "reasoning_mcq_sft.jsonl"), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)


def write_llava_onevision(root, leak):
    """lmms-lab/LLaVA-OneVision-Data: <subset>/train-0000N-of-0000M.parquet with id, image
    {bytes, path} (None for text-only rows), conversations, data_source. `leak` (a GMAI-MMBench
    item with its options) is planted verbatim: same image bytes, its question and options."""
    d = os.path.join(root, "LLaVA-OneVision-Data")
    rows = []
    for k in range(6):
        im = None if k == 5 else {"bytes": encoded(picture(900 + k)), "path": f"{k}.png"}
        question = ("<image>\n" if im else "") + f"How many cubes are left in scene {k}?"
        rows.append({"id": f"clevr_{k}", "image": im, "data_source": "CLEVR-Math",
                     "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": str(k + 1)}]})
    options = "\n".join(f"{L}. {t}" for L, t in leak["options"].items() if t)
    rows.append({"id": "planted_gmai", "image": {"bytes": encoded(leak["image"]), "path": "p.png"},
                 "data_source": "medical", "conversations": [
                     {"from": "human", "value": f"<image>\n{leak['question']}\n{options}"},
                     {"from": "gpt", "value": leak["answer"]}]})
    _parquet(os.path.join(d, "CLEVR-Math(MathV360K)", "train-00000-of-00002.parquet"), rows[:4])
    _parquet(os.path.join(d, "CLEVR-Math(MathV360K)", "train-00001-of-00002.parquet"), rows[4:])


def write_all(root):
    """Every source and benchmark under root; returns the planted benchmark items (benchmark,
    question, where planted) that decontamination must remove."""
    os.makedirs(root, exist_ok=True)
    mmmu, gmai = write_mmmu(root), write_gmai_mmbench(root)
    rad = write_vqa_rad(root)
    write_slake(root, leak=path_test_item())
    write_path_vqa(root, leak=slake_test_item())
    pmc = write_pmc_vqa(root, leak=mmmu)
    write_gmai_reasoning(root)
    write_llava_onevision(root, leak=gmai)
    return [rad, pmc, {"benchmark": "mmmu", "question": mmmu["question"], "planted_in": "pmc_vqa (reworded)"},
            {"benchmark": "gmai_mmbench", "question": gmai["question"], "planted_in": "llava_onevision (verbatim)"},
            {"benchmark": "slake", "question": slake_test_item()["question"], "planted_in": "path_vqa (reworded)"},
            {"benchmark": "path_vqa", "question": path_test_item()["question"], "planted_in": "slake (verbatim)"}]
