"""Readers on fixtures written in each dataset's raw format, the ShareGPT conversion, the mix.

    python -m pytest -q tests/test_sources.py
"""
import base64
import io
import json
import os
import pickle
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

import conftest
import prompts
import sources
from sources import load_source, to_sharegpt


def png_bytes(value=128, size=(8, 6), fmt="PNG"):
    buf = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buf, format=fmt)
    return buf.getvalue()


def touch_image(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png_bytes())


# ----------------------------------------------------------------------------- VQA-RAD
def write_vqa_rad(root, n_images=True):
    rows = [
        {"qid": 1, "phrase_type": "freeform", "image_name": "synpic1.jpg", "image_organ": "HEAD",
         "question": "Is there a bleed?", "question_rephrase": "NULL", "question_type": "PRES",
         "answer": "Yes", "answer_type": "CLOSED"},
        {"qid": 2, "phrase_type": "para", "image_name": "synpic1.jpg", "image_organ": "HEAD",
         "question": "How many ribs?", "question_type": "COUNT", "answer": 12, "answer_type": "OPEN"},
        {"qid": 3, "phrase_type": "test_freeform", "image_name": "synpic2.jpg", "image_organ": "CHEST",
         "question": "Is the heart enlarged? ", "question_rephrase": "NULL", "question_type": "SIZE",
         "answer": "no", "answer_type": "CLOSED "},
        {"qid": 4, "phrase_type": "test_para", "image_name": "synpic2.jpg", "image_organ": "CHEST",
         "question": "Where is the mass?", "question_rephrase": "where is it?", "question_type": "POS",
         "answer": "left lung", "answer_type": "OPEN"},
        {"qid": 5, "phrase_type": "test_freeform", "image_name": "synpic2.jpg", "question": "Broken row?"},
    ]
    os.makedirs(root, exist_ok=True)
    json.dump(rows, open(os.path.join(root, "VQA_RAD Dataset Public.json"), "w"))
    touch_image(os.path.join(root, "VQA_RAD Image Folder", "synpic1.jpg"))


def test_vqa_rad_splits_by_phrase_type_and_reports_malformed_rows(tmp_path):
    write_vqa_rad(str(tmp_path))
    train = load_source("vqa_rad", str(tmp_path), "train")
    test = load_source("vqa_rad", str(tmp_path), "test")
    assert [r["id"] for r in train] == ["vqa_rad-1", "vqa_rad-2"]
    assert [r["id"] for r in test] == ["vqa_rad-3", "vqa_rad-4"]
    assert train[1]["answer"] == "12"  # integer answers in the JSON become text
    assert test[0]["question"] == "Is the heart enlarged?"
    assert test[0]["meta"]["answer_type"] == "CLOSED"  # the raw 'CLOSED ' is stripped
    assert test[1]["meta"]["question_rephrase"] == "where is it?"
    assert train[0]["images"] == [os.path.join(str(tmp_path), "VQA_RAD Image Folder", "synpic1.jpg")]
    assert test.report.read == 3 and sum(test.report.counts.values()) == 1


def test_vqa_rad_real_test_split_has_451_items_251_yes_no():
    recs = load_source("vqa_rad", conftest.shared("vqa_rad"), "test")
    assert len(recs) == 451
    assert sum(r["answer"].lower() in ("yes", "no") for r in recs) == 251
    assert len({r["id"] for r in recs}) == 451


def test_reading_annotations_does_not_need_the_images():
    recs = load_source("vqa_rad", conftest.shared("vqa_rad"), "train")
    present = sum(os.path.exists(r["images"][0]) for r in recs)
    assert len(recs) == 1797 and 0 < present < len(recs)


# ----------------------------------------------------------------------------- SLAKE
def test_slake_language_filter_and_image_folder(tmp_path):
    rows = [{"qid": 1, "img_name": "xmlab1/source.jpg", "question": "What organ?", "answer": "Lung",
             "q_lang": "en", "answer_type": "OPEN", "content_type": "Organ", "modality": "CT"},
            {"qid": 2, "img_name": "xmlab1/source.jpg", "question": "哪个器官?", "answer": "肺",
             "q_lang": "zh", "answer_type": "OPEN"},
            {"qid": 3, "img_name": "xmlab1/source.jpg", "q_lang": "en", "answer": "Yes"}]
    json.dump(rows, open(tmp_path / "validate.json", "w"), ensure_ascii=False)
    en = load_source("slake", str(tmp_path), "validation")
    both = load_source("slake", str(tmp_path), "validation", lang=None)
    assert [r["id"] for r in en] == ["slake-1"] and len(both) == 2
    assert en[0]["images"] == [os.path.join(str(tmp_path), "imgs", "xmlab1", "source.jpg")]
    assert en[0]["meta"]["content_type"] == "Organ"
    assert en.report.counts and sum(en.report.counts.values()) == 1


def test_slake_real_english_test_split():
    recs = load_source("slake", conftest.shared("slake"), "test")
    assert len(recs) == 1061
    assert sum(r["meta"]["answer_type"] == "CLOSED" for r in recs) == 416
    assert sum(r["answer"].lower() in ("yes", "no") for r in recs) == 355
    assert len(load_source("slake", conftest.shared("slake"), "test", lang=None)) == 2094


# ----------------------------------------------------------------------------- PathVQA
def test_path_vqa_parquet_with_embedded_images(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rows = [{"image": {"bytes": png_bytes(10, fmt="JPEG"), "path": "a.jpg"}, "question": "Is this fat?",
             "answer": "yes"},
            {"image": {"bytes": png_bytes(20), "path": None}, "question": None, "answer": "no"},
            {"image": {"bytes": png_bytes(30), "path": None}, "question": "What is shown?", "answer": "granuloma"},
            {"image": {"bytes": b"not an image", "path": None}, "question": "Corrupt?", "answer": "no"}]
    pq.write_table(pa.Table.from_pylist(rows), str(d / "test-00000-of-00001.parquet"))
    recs = load_source("path_vqa", str(tmp_path), "test")
    assert [r["answer"] for r in recs] == ["yes", "granuloma"]
    assert recs[0]["meta"]["answer_type"] == "yes/no" and recs[1]["meta"]["answer_type"] == "other"
    im = recs[0]["images"][0]
    assert isinstance(im, Image.Image) and im.format == "JPEG" and im.size == (8, 6)
    assert im.convert("L").getpixel((0, 0)) in range(5, 16)
    assert dict(recs.report.counts) == {"missing question, answer or image": 2}


def test_path_vqa_original_pickles(tmp_path):
    qa = [{"image": "val_0001", "question": "What have lost their nuclei?", "answer": "neutrophils"},
          {"image": "val_0002", "question": "Is this a vessel?"},
          "not a dict"]
    (tmp_path / "qas" / "val").mkdir(parents=True)
    pickle.dump(qa, open(tmp_path / "qas" / "val" / "val_qa.pkl", "wb"))
    recs = load_source("path_vqa", str(tmp_path), "val")
    assert len(recs) == 1 and recs[0]["answer"] == "neutrophils"
    assert recs[0]["images"] == [os.path.join(str(tmp_path), "images", "val", "val_0001.jpg")]
    assert recs.report.read == 3 and sum(recs.report.counts.values()) == 2
    # the LXMERT-style variant: img_id / sent / label {answer: score}
    vqa = [{"img_id": "test_0007", "sent": "Is there fibrosis?", "label": {"yes": 1.0}, "answer_type": "yes/no"}]
    pickle.dump(vqa, open(tmp_path / "qas" / "test_vqa.pkl", "wb"))
    recs = load_source("path_vqa", str(tmp_path), "test")
    assert (recs[0]["question"], recs[0]["answer"]) == ("Is there fibrosis?", "yes")


class Payload:
    pass


def test_path_vqa_pickle_with_objects_is_refused(tmp_path):
    (tmp_path / "qas" / "train").mkdir(parents=True)
    pickle.dump([Payload()], open(tmp_path / "qas" / "train" / "train_qa.pkl", "wb"))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_source("path_vqa", str(tmp_path), "train")


# ----------------------------------------------------------------------------- PMC-VQA
def test_pmc_vqa_v1_columns_with_anwser_spelling_and_prefixed_choices(tmp_path):
    (tmp_path / "train.csv").write_text(
        "Figure_path,Question,Anwser,Choice A,Choice B,Choice C,Choice D,Anwser_label\n"
        "PMC1_f1.jpg,What modality?, CT ,A:MRI, B:CT , C:X-ray, D:PET,B\n"
        "PMC2_f2.jpg,Which organ?,Liver,A:Liver,B:Lung,C:Kidney,D:Heart,\n"
        "PMC3_f3.jpg,Broken?,Bone,A:Liver,B:Lung,C:Kidney,D:Heart,E\n")
    recs = load_source("pmc_vqa", str(tmp_path), "train")
    assert recs[0]["options"] == {"A": "MRI", "B": "CT", "C": "X-ray", "D": "PET"}
    assert recs[0]["answer"] == "B" and recs[0]["meta"]["answer_text"] == "CT"
    assert recs[1]["answer"] == "A"  # no label: the answer text locates the letter
    assert len(recs) == 2 and recs.report.read == 3
    assert recs[0]["images"] == [os.path.join(str(tmp_path), "images", "PMC1_f1.jpg")]


def test_pmc_vqa_v2_columns_and_caption_subset(tmp_path):
    (tmp_path / "train_2.csv").write_text(
        "index,Figure_path,Caption,Question,Choice A,Choice B,Choice C,Choice D,Answer,split\n"
        "0,f1.jpg,Axial CT of the chest.,What is seen?,A:Mass,B:Nothing,C:Fluid,D:Air,A,train\n"
        "1,f1.jpg,Axial CT of the chest.,Which side?,A:Left,B:Right,C:Both,D:None,B,train\n"
        "2,f2.jpg,,Which stain?,A:HE,B:PAS,C:IHC,D:None,C,train\n")
    (tmp_path / "images_2" / "figures").mkdir(parents=True)
    vqa = load_source("pmc_vqa", str(tmp_path), "train", version=2)
    assert [(r["id"], r["answer"]) for r in vqa] == [("pmc_vqa-0", "A"), ("pmc_vqa-1", "B"), ("pmc_vqa-2", "C")]
    assert vqa[0]["images"] == [os.path.join(str(tmp_path), "images_2", "figures", "f1.jpg")]
    caps = load_source("pmc_vqa", str(tmp_path), "train", subset="caption")  # captions: version 2
    assert [r["answer"] for r in caps] == ["Axial CT of the chest."]  # one per figure
    assert caps[0]["meta"]["task"] == "caption"
    assert caps[0]["images"] == [os.path.join(str(tmp_path), "images_2", "figures", "f1.jpg")]
    assert to_sharegpt(caps[0])["messages"] == [{"role": "user", "content": "<image>Describe this medical image."},
                                                {"role": "assistant", "content": "Axial CT of the chest."}]
    assert dict(caps.report.counts) == {"duplicate figure": 1, "missing Caption": 1}
    with pytest.raises(ValueError, match="only in version 2"):
        load_source("pmc_vqa", str(tmp_path), "train", subset="caption", version=1)


def test_pmc_vqa_questions_default_to_version_1_and_the_clean_test_set(tmp_path):
    header = "Figure_path,Question,Answer,Choice A,Choice B,Choice C,Choice D,Answer_label\n"
    (tmp_path / "train.csv").write_text(header + "v1.jpg,Q1?,CT,A:MRI,B:CT,C:PET,D:US,B\n")
    (tmp_path / "test_clean.csv").write_text(header + "c.jpg,Q2?,US,A:MRI,B:CT,C:PET,D:US,D\n")
    (tmp_path / "train_2.csv").write_text("index,Figure_path,Caption,Question,Choice A,Choice B,Answer,split\n"
                                          "0,v2.jpg,Cap.,Q3?,A:x,B:y,A,train\n")
    assert [r["question"] for r in load_source("pmc_vqa", str(tmp_path), "train")] == ["Q1?"]
    clean = load_source("pmc_vqa", str(tmp_path), "test_clean")
    assert [(r["question"], r["answer"]) for r in clean] == [("Q2?", "D")]
    assert clean[0]["images"] == [os.path.join(str(tmp_path), "images", "c.jpg")]
    with pytest.raises(ValueError, match="no split 'test_clean'"):  # version 2 has no clean test set
        load_source("pmc_vqa", str(tmp_path), "test_clean", version=2)


def test_missing_dataset_file_names_the_layout_and_where_it_is_published(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'test_clean.csv' not found .*huggingface.co/datasets/xmcmic/PMC-VQA"):
        load_source("pmc_vqa", str(tmp_path), "test_clean")
    for split in ("validation", "val"):
        with pytest.raises(FileNotFoundError, match="GMAI_mm_bench_VAL.tsv.*OpenGVLab/GMAI-MMBench"):
            load_source("gmai_mmbench", str(tmp_path), split)
    with pytest.raises(FileNotFoundError, match="lmms-lab/LLaVA-OneVision-Data"):
        load_source("llava_onevision", str(tmp_path), "train")


def test_pmc_vqa_reads_a_file_with_the_answer_letter_only(tmp_path):
    """Answer_label (the letter) is enough; the answer's text column may be absent."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "f.jpg")
    (tmp_path / "test_clean.csv").write_text("Figure_path,Question,Choice A,Choice B,Answer_label\n"
                                             "f.jpg,Which scan?,A:CT,B:MRI,B\n")
    (r,) = list(load_source("pmc_vqa", str(tmp_path), "test_clean"))
    assert (r["answer"], r["options"], r["meta"]["answer_text"]) == ("B", {"A": "CT", "B": "MRI"}, "MRI")


def test_unexpected_columns_name_the_columns_found_and_expected(tmp_path):
    (tmp_path / "train.csv").write_text("image,query,label\nx.jpg,Q?,A\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['Figure_path', 'Question', 'Answer', 'Choice A'\]; "
                                         r"found \['image', 'query', 'label'\]"):
        load_source("pmc_vqa", str(tmp_path), "train")
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist([{"img": b"x", "question": "Q?", "answer": "yes"}]),
                   str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"test-00000-of-00001.parquet: missing column\(s\) \['image'\]; "
                                         r"found \['img', 'question', 'answer'\]"):
        load_source("path_vqa", str(tmp_path), "test")
    (tmp_path / "GMAI_mm_bench_VAL.tsv").write_text("index\tquestion\tA\tB\n0\tQ?\tx\ty\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['image'\]"):
        load_source("gmai_mmbench", str(tmp_path), "validation")


# ----------------------------------------------------------------------------- MMMU
def mmmu_row(id, question, options, answer, images, qtype="multiple-choice"):
    row = {"id": id, "question": question, "options": options, "answer": answer, "question_type": qtype,
           "subfield": "Anatomy", "img_type": "['Photo']", "explanation": "", "topic_difficulty": "Easy"}
    for k in range(1, 8):
        row[f"image_{k}"] = {"bytes": png_bytes(10 * k), "path": f"{k}.png"} if k in images else None
    return row


def write_mmmu_configs(root, rows_by_folder, split="validation"):
    """The hub's layout: one folder per subject config, <root>/<Subject>/<split>-00000-of-00001.parquet."""
    for folder, rows in rows_by_folder.items():
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(root, folder, f"{split}-00000-of-00001.parquet"))


def test_mmmu_parquet_health_medicine_tags_options_and_short_answers(tmp_path):
    write_mmmu_configs(str(tmp_path), {
        "Clinical_Medicine": [
            mmmu_row("validation_Clinical_Medicine_1", "Compare <image 2> with <image 1>.", "['x', 'y', 'z']", "C",
                     {1, 2}),
            mmmu_row("validation_Clinical_Medicine_2", "Dose in <image 1>?", "[]", "5 mg", {1}, "open"),
            mmmu_row("validation_Clinical_Medicine_3", "Bad <image 1>", "['x', 'y'", "A", {1}),
            mmmu_row("validation_Clinical_Medicine_4", "Missing <image 3>", "['x', 'y']", "A", {1}),
        ],
        "Art": [mmmu_row("validation_Art_1", "<image 1>", "['a', 'b']", "A", {1})],
    })
    recs = load_source("mmmu", str(tmp_path), "validation")
    assert [r["id"] for r in recs] == ["validation_Clinical_Medicine_1", "validation_Clinical_Medicine_2"]
    first, short = recs
    assert first["options"] == {"A": "x", "B": "y", "C": "z"} and first["meta"]["answer_text"] == "z"
    assert [im.convert("L").getpixel((0, 0)) for im in first["images"]] == [10, 20]  # image_1, image_2
    assert first["meta"] == {"subject": "Clinical_Medicine", "subfield": "Anatomy", "question_type": "multiple-choice",
                             "img_type": "['Photo']", "topic_difficulty": "Easy", "explanation": "", "answer_text": "z"}
    assert short["options"] is None and short["answer"] == "5 mg"
    assert recs.report.read == 5 and recs.report.counts == {  # the Art row too: read, counted, not yielded
        "options is not a list literal": 1, "an <image N> tag without its image column (or no image)": 1,
        "not a Health & Medicine subject": 1}


def test_mmmu_rows_of_other_subjects_under_the_root_are_counted_by_reason(tmp_path):
    """A download of several configs: each row is read once; those of subjects not asked for are
    skipped under a reason that says so, whichever subjects are asked for."""
    write_mmmu_configs(str(tmp_path), {
        "Pharmacy": [mmmu_row(f"validation_Pharmacy_{k}", "<image 1>", "['a', 'b']", "A", {1}) for k in (1, 2)],
        "Art": [mmmu_row(f"validation_Art_{k}", "<image 1>", "['a', 'b']", "B", {1}) for k in (1, 2, 3)],
    })
    health = load_source("mmmu", str(tmp_path), "validation")
    assert [r["meta"]["subject"] for r in health] == ["Pharmacy", "Pharmacy"]
    assert (health.report.read, health.report.kept) == (5, 2)
    assert health.report.counts == {"not a Health & Medicine subject": 3}
    assert health.report.examples["not a Health & Medicine subject"] == "validation_Art_1"
    art = load_source("mmmu", str(tmp_path), "validation", subjects=("Art",))
    assert [r["id"] for r in art] == ["validation_Art_1", "validation_Art_2", "validation_Art_3"]
    assert art.report.counts == {"not one of the requested subjects": 2}
    assert len(load_source("mmmu", str(tmp_path), "validation", subjects=())) == 5  # none asked for = all


def test_mmmu_ids_without_the_subject_take_it_from_the_config_folder(tmp_path):
    """Re-exports that number the ids 0, 1, ... keep the hub's <Subject>/ folders: the folder names
    the subject. A file outside any subject folder is read, and its rows counted as of unknown subject."""
    write_mmmu_configs(str(tmp_path), {
        "Clinical_Medicine": [mmmu_row(str(k), "<image 1>", "['a', 'b']", "A", {1}) for k in (0, 1)],
        "Music": [mmmu_row("2", "<image 1>", "['a', 'b']", "A", {1})],
        # the id names the subject: it wins over the folder
        "Public_Health": [mmmu_row("validation_Art_7", "<image 1>", "['a', 'b']", "A", {1})],
        "exports": [mmmu_row("3", "<image 1>", "['a', 'b']", "A", {1})],
    })
    recs = load_source("mmmu", str(tmp_path), "validation")
    assert [(r["id"], r["meta"]["subject"], r["meta"]["subfield"]) for r in recs] == [
        ("0", "Clinical_Medicine", "Anatomy"), ("1", "Clinical_Medicine", "Anatomy")]
    unknown = "subject unknown: neither the id nor the <Subject>/ folder names an MMMU subject"
    assert recs.report.read == 5 and recs.report.counts == {"not a Health & Medicine subject": 2, unknown: 1}
    assert recs.report.examples[unknown].endswith(os.path.join("exports", "validation-00000-of-00001.parquet: 3"))


# ----------------------------------------------------------------------------- GMAI-MMBench
def test_gmai_mmbench_tsv_with_base64_images_and_image_references(tmp_path):
    b64 = base64.b64encode(png_bytes(77)).decode()
    lines = ["index\tquestion\tA\tB\tC\tD\tE\tanswer\timage\tcategory\tmodality",
             f"0\tWhich organ?\tLiver\tLung\tHeart\t\t\tB\t{b64}\tOrgan\tCT",
             "1\tWhich side?\tLeft\tRight\t\t\t\tA\t0\tPosition\tCT",  # image given as a row index
             "2\tBroken?\tLeft\tRight\t\t\t\tA\t###\tPosition\tCT",
             f"3\tNo gold?\tLeft\tRight\t\t\t\tF\t{b64}\tPosition\tCT"]
    (tmp_path / "GMAI-MMBench_VAL.tsv").write_text("\n".join(lines) + "\n")
    recs = load_source("gmai_mmbench", str(tmp_path), "validation")
    assert [r["id"] for r in recs] == ["gmai_mmbench-0", "gmai_mmbench-1"]
    assert recs[0]["options"] == {"A": "Liver", "B": "Lung", "C": "Heart"}
    assert recs[1]["images"][0].convert("L").getpixel((0, 0)) == 77
    assert recs[0]["meta"]["category"] == "Organ"
    assert sum(recs.report.counts.values()) == 2


@pytest.mark.parametrize("name", ["GMAI_mm_bench_VAL.tsv", "GMAI-MMBench_VAL.tsv"])
def test_gmai_mmbench_under_the_authors_and_vlmevalkit_file_names(tmp_path, name):
    b64 = base64.b64encode(png_bytes(9)).decode()
    (tmp_path / name).write_text("index\tquestion\tA\tB\tanswer\timage\tdepartment\n"
                                 f"7\tWhich?\tx\ty\tB\t{b64}\tRadiology\n")
    recs = load_source("gmai_mmbench", str(tmp_path), "validation")
    assert [(r["id"], r["answer"], r["meta"]["department"]) for r in recs] == [("gmai_mmbench-7", "B", "Radiology")]


def test_gmai_mmbench_test_parts_are_read_in_part_order(tmp_path):
    b64 = base64.b64encode(png_bytes(9)).decode()
    for part in (1, 2, 10):
        (tmp_path / f"GMAI_mm_bench_TEST_part_{part}.tsv").write_text(
            "index\tquestion\tA\tB\tanswer\timage\n" f"{part}\tQ{part}?\tx\ty\tA\t{b64}\n")
    assert [r["id"] for r in load_source("gmai_mmbench", str(tmp_path), "test")] == \
        ["gmai_mmbench-1", "gmai_mmbench-2", "gmai_mmbench-10"]


# ----------------------------------------------------------------------------- conversational sources
def test_gmai_reasoning_jsonl_keeps_the_conversation(tmp_path):
    good = {"image": "imgs/a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhich finding?\nA. x\nB. y"},
        {"from": "gpt", "value": "<think>look</think><answer>B</answer>"}]}
    bad_tags = {"image": "imgs/a.png", "conversations": [
        {"from": "human", "value": "<image><image>Q"}, {"from": "gpt", "value": "A"}]}
    (tmp_path / "reasoning_mcq_sft.jsonl").write_text(
        json.dumps(good) + "\n{not json\n" + json.dumps(bad_tags) + "\n")
    recs = load_source("gmai_reasoning", str(tmp_path), "train")
    assert len(recs) == 1 and recs.report.read == 3
    r = recs[0]
    assert r["meta"]["final_answer"] == "B" and r["question"].startswith("Which finding?")
    assert r["images"] == [os.path.join(str(tmp_path), "imgs", "a.png")]
    sg = to_sharegpt(r)
    assert [m["role"] for m in sg["messages"]] == ["user", "assistant"]
    assert sg["messages"][0]["content"] == good["conversations"][0]["value"]


def test_llava_onevision_parquet_text_only_and_image_rows(tmp_path):
    (tmp_path / "CLEVR").mkdir()
    rows = [{"id": "a", "image": {"bytes": png_bytes(5), "path": "a.png"}, "data_source": "clevr",
             "conversations": [{"from": "human", "value": "How many cubes?"}, {"from": "gpt", "value": "3"}]},
            {"id": "b", "image": None, "data_source": "text",
             "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            {"id": "c", "image": None, "data_source": "text",
             "conversations": [{"from": "human", "value": "<image>What?"}, {"from": "gpt", "value": "x"}]}]
    pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "CLEVR" / "train-00000-of-00001.parquet"))
    recs = load_source("llava_onevision", str(tmp_path), "train")
    assert [r["id"] for r in recs] == ["llava_ov-a", "llava_ov-b"]
    assert recs[0]["meta"]["subset"] == "CLEVR" and recs[1]["images"] == []
    # an image without a tag gets its placeholder in the first user turn
    assert to_sharegpt(recs[0])["messages"][0]["content"] == "<image>How many cubes?"
    assert to_sharegpt(recs[1])["messages"][0]["content"] == "Hi"
    assert dict(recs.report.counts) == {"1 <image> tags for 0 images": 1}


# ----------------------------------------------------------------------------- ShareGPT conversion
def rec(question, answer, options=None, n_images=1, id="x"):
    return {"id": id, "question": question, "answer": answer, "options": options,
            "images": [f"/img{i}.png" for i in range(n_images)], "meta": {}}


def test_multiple_choice_renders_lettered_options_and_the_letter_instruction():
    sg = to_sharegpt(rec("Which organ?", "B", {"A": "Liver", "B": "Lung"}))
    assert sg["messages"] == [
        {"role": "user", "content": "<image>Which organ?\nA. Liver\nB. Lung\n"
                                    "Answer with the option's letter from the given choices directly."},
        {"role": "assistant", "content": "B"}]


def test_yes_no_and_open_questions_get_their_instructions():
    yn = to_sharegpt(rec("Is there a mass?", "yes", n_images=2))
    # the canonical yes/no template is the MultiMedEval evaluation prompt
    assert yn["messages"][0]["content"] == \
        "<image><image>Answer the following question with yes or no. Is there a mass?"
    assert yn["messages"][1]["content"] == "Yes" and len(yn["images"]) == 2
    op = to_sharegpt(rec("Which organ?", "left lung"), with_answer=False, system="Be brief.")
    assert op["messages"] == [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "<image>Which organ?\n"
                                                          "Answer the question using a single word or phrase."}]


def test_augmentation_is_stable_and_uses_every_template():
    recs = [rec("Is it?", "no", id=str(i)) for i in range(40)]
    a = [to_sharegpt(r, augment=True, seed=1)["messages"][0]["content"] for r in recs]
    b = [to_sharegpt(r, augment=True, seed=1)["messages"][0]["content"] for r in recs]
    assert a == b
    expected = {"<image>" + t.format(question="Is it?") for t in prompts.INSTRUCTIONS["yesno"]}
    assert set(a) == expected


def test_image_paths_in_downloaded_files_stay_inside_the_dataset_folder(tmp_path):
    """A crafted dataset file must not pull other local files into training: absolute and '..'
    paths are counted skips; a user's own training JSONL may still use absolute paths."""
    rows = [{"qid": 1, "phrase_type": "freeform", "image_name": "../../secret.jpg", "question": "Q?", "answer": "A"},
            {"qid": 2, "phrase_type": "freeform", "image_name": "/etc/secret.jpg", "question": "Q?", "answer": "A"},
            {"qid": 3, "phrase_type": "freeform", "image_name": "ok.jpg", "question": "Q?", "answer": "A"}]
    json.dump(rows, open(tmp_path / "VQA_RAD Dataset Public.json", "w"))
    recs = load_source("vqa_rad", str(tmp_path), "train")
    assert [r["id"] for r in recs] == ["vqa_rad-3"] and dict(recs.report.counts) == {sources.OUTSIDE: 2}
    (tmp_path / "train.csv").write_text("Figure_path,Question,Answer,Choice A,Choice B,Answer_label\n"
                                        "../x.jpg,Q?,a,A:a,B:b,A\nsub/../y.jpg,Q?,a,A:a,B:b,A\n")
    pmc = load_source("pmc_vqa", str(tmp_path), "train")
    assert [r["images"][0] for r in pmc] == [os.path.join(str(tmp_path), "images", "y.jpg")]
    assert dict(pmc.report.counts) == {sources.OUTSIDE: 1}
    (tmp_path / "reasoning_mcq_sft.jsonl").write_text(json.dumps(
        {"image": "../../x.png", "conversations": [{"from": "human", "value": "<image>Q"},
                                                   {"from": "gpt", "value": "A"}]}) + "\n")
    assert dict(load_source("gmai_reasoning", str(tmp_path), "train").report.counts) == {sources.OUTSIDE: 1}
    (tmp_path / "llava").mkdir()
    pq.write_table(pa.Table.from_pylist([{"id": "a", "image": {"bytes": None, "path": "../../x.png"},
                                          "conversations": [{"from": "human", "value": "<image>Q"},
                                                            {"from": "gpt", "value": "A"}]}]),
                   str(tmp_path / "llava" / "train-00000-of-00001.parquet"))
    assert dict(load_source("llava_onevision", str(tmp_path / "llava"), "train").report.counts) == {sources.OUTSIDE: 1}
    from data import read_sharegpt
    (tmp_path / "mine.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "<image>Q"},
                                                                  {"role": "assistant", "content": "A"}],
                                                     "images": ["/data/elsewhere/scan.png"]}) + "\n")
    assert read_sharegpt(str(tmp_path / "mine.jsonl"))[0][0]["images"] == ["/data/elsewhere/scan.png"]
