"""The shortened demo end to end (`python -m demo.run --quick`): every stage leaves its outputs, the
planted benchmark items are removed by curation, training lowers the loss, and the report and
plots state what the per-sample files say. One demo run (a few minutes on 2 cores) serves all
the checks that read it; none of them writes into it, so they pass in any order.

    python -m pytest -q tests/test_demo.py
"""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from demo import run, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a lesion's attribute values, written out here to check the demo's captions against
ATTRIBUTE_VALUES = {"shape": ("circle", "square", "triangle"), "brightness": ("bright", "dark"),
                    "size": ("small", "large"), "side": ("left", "right")}


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "demo_out")
    proc = subprocess.run([sys.executable, "-m", "demo.run", "--quick", "--out", out], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def report_row(report, first_cell, section):
    """The cells of the first Markdown table row that starts with `| first_cell |` under the heading `section`."""
    lines = report[report.index(f"\n## {section}"):].splitlines()
    line = next(l for l in lines if l.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.slow  # reads the demo run (the fixture: a subprocess of about 1-3 minutes)
def test_synthetic_data_has_train_test_and_captions(out):
    synth = os.path.join(out, "synth")
    train, test = read_jsonl(os.path.join(synth, "train.jsonl")), read_jsonl(os.path.join(synth, "test.jsonl"))
    captions = read_jsonl(os.path.join(synth, "captions.jsonl"))
    assert len(train) == 240 and len(test) == 60
    assert {c["split"] for c in captions} == {"train", "test"}
    assert all(os.path.exists(os.path.join(synth, r["images"][0])) for r in test)


@pytest.mark.slow
def test_base_checkpoint_is_a_hub_style_directory(out):
    files = set(os.listdir(os.path.join(out, "base")))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json"} <= files
    with open(os.path.join(out, "base", "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "qwen2_5_vl" and cfg["vocab_size"] % 64 == 0


@pytest.mark.slow
def test_base_checkpoint_has_a_pretrained_vision_tower_and_a_fresh_decoder(out):
    """Every vision weight differs from a fresh init with the demo's seed, every decoder weight equals it;
    the linear probe of the pretrained tower tells the modalities apart on the benchmark scans (measured:
    1.0 after the quick run's 40 steps; chance 0.25)."""
    import torch
    from infimed import QwenVL
    base = QwenVL.from_pretrained(os.path.join(out, "base"))
    torch.manual_seed(run.DemoConfig().seed)  # the seed stage_model initialises with
    fresh = QwenVL(base.config)
    same = {k for k, v in base.state_dict().items() if torch.equal(v, fresh.state_dict()[k])}
    assert all(not k.startswith("visual.") for k in same)  # tower and merger were trained
    assert all(k in same for k in base.state_dict() if not k.startswith("visual."))
    with open(os.path.join(out, "vision_probe.json")) as f:
        probe = json.load(f)
    assert set(probe) == {"modality", "count", "shape", "brightness", "size", "side"}  # one per caption label
    assert probe["modality"] >= 0.9, probe


@pytest.mark.slow
def test_vision_pretraining_rerun_starts_from_the_same_init(out, tmp_path):
    """Rerunning the stage (its marker gone) pretrains the stage-2 random init again, not the tower
    it already pretrained. It runs on a copy of the demo's data and base checkpoint, which it rewrites.
    Two runs agree closely but not always bit for bit: the demo ran the first in another process, and
    multi-threaded float sums need not add up in the same order. The bounds 1e-4 and 1e-2 lie between
    the drifts measured for a rerun and for pretraining on top (docs/notes.md)."""
    from image_processor import ImageProcessor
    from infimed import QwenVL
    mine = str(tmp_path / "demo_out")
    for name in ("synth", "base"):
        shutil.copytree(os.path.join(out, name), os.path.join(mine, name))
    shutil.copy2(os.path.join(out, "base.done"), mine)  # no vision.done: the stage runs again
    paths = run.demo_paths(mine)
    cfg = dataclasses.replace(run.DemoConfig(out=mine), **run.QUICK)
    first = QwenVL.from_pretrained(paths["base"]).state_dict()
    run.stage_vision(cfg, paths)
    model = QwenVL.from_pretrained(paths["base"])
    again = {k: v.clone() for k, v in model.state_dict().items()}
    drift = lambda a, b: max(float((a[k] - b[k]).abs().max()) for k in a)
    assert drift(first, again) <= 1e-4
    # what the stage must not do: continue from its own output
    x, grid, labels = run.caption_set(paths, "train", ImageProcessor.from_pretrained(paths["base"]))
    synthetic.pretrain_vision(model, x, grid, labels, cfg.vision_steps, cfg.vision_lr, cfg.vision_batch, cfg.seed,
                              log=lambda line: None)
    assert drift(again, model.state_dict()) >= 1e-2


@pytest.mark.slow
def test_curation_removes_every_planted_benchmark_item(out):
    with open(os.path.join(out, "curate", "summary.json")) as f:
        s = json.load(f)
    assert len(s["planted"]) == 4
    assert sorted(s["planted_removed"]) == sorted(s["planted"])
    train_ids = {r["id"] for r in read_jsonl(os.path.join(out, "curate", "train.jsonl"))}
    assert not train_ids & set(s["planted"])
    # the perplexity filter dropped some captions, the others all reached the training file
    assert 0 < s["captions_kept"] < s["raw"]["captions"]
    assert s["train"] == len(train_ids) == s["raw"]["questions"] + s["captions_kept"]
    for step in ("vqa_augmented", "captions_filtered", "decontaminated"):
        assert os.path.exists(os.path.join(out, "curate", f"{step}.report.json"))


def test_option_check_states_the_answer_then_walks_the_options_up_to_it():
    import answers
    options = {"A": "CT", "B": "MRI", "C": "X-ray"}
    assert run.option_check(options, "B") == "MRI\nA. CT: no\nB. MRI: yes\n<answer>B</answer>"
    assert run.option_check(options, "A") == "CT\nA. CT: yes\n<answer>A</answer>"
    assert all(answers.parse_choice(run.option_check(options, g), options) == g for g in options)


def test_enhancement_rewrites_choice_answers_only_and_counts_them():
    choice = {"messages": [{"role": "user", "content": "<image>Which modality?\nA. CT\nB. MRI\n"
                                                       "Answer with the option's letter."},
                           {"role": "assistant", "content": "B"}], "images": ["x.png"]}
    open_q = {"messages": [{"role": "user", "content": "<image>Which modality?"},
                           {"role": "assistant", "content": "MRI"}], "images": ["x.png"]}
    out, counts = run.enhance_choice_answers([choice, open_q])
    assert counts == {"enhanced": 1, "kept:not_multiple_choice": 1}
    assert out[0]["messages"][0] == choice["messages"][0]  # the question stays as it was
    assert out[0]["messages"][1]["content"] == "MRI\nA. CT: no\nB. MRI: yes\n<answer>B</answer>"
    assert out[1] == open_q


def lettered_options(user_turn):
    return dict(m.groups() for m in (re.fullmatch(r"([A-D])\. (.+)", l) for l in user_turn.split("\n")) if m)


@pytest.mark.slow
def test_every_trained_choice_answer_is_an_option_check_within_the_generation_budget(out):
    """Each multiple-choice record of the curated training file answers with its value, then 'X. value: no'
    for each option before the right one, 'X. value: yes' for it, then <answer>X</answer>; the right letter
    is the bare letter the synthetic set gave that record before curation."""
    from data import load_tokenizer
    tok = load_tokenizer(os.path.join(out, "base"))
    raw = {r["id"]: r for r in read_jsonl(os.path.join(out, "synth", "train.jsonl"))}
    raw_choice = {i for i, r in raw.items() if lettered_options(r["messages"][0]["content"])}
    n = 0
    for r in read_jsonl(os.path.join(out, "curate", "train.jsonl")):
        options = lettered_options(r["messages"][-2]["content"])
        if not options:
            continue
        gold = raw[r["id"]]["messages"][-1]["content"]
        before = list(options)[:list(options).index(gold)]
        assert r["messages"][-1]["content"].split("\n") == (
            [options[gold]] + [f"{L}. {options[L]}: no" for L in before] + [f"{gold}. {options[gold]}: yes",
                                                                            f"<answer>{gold}</answer>"])
        assert len(tok(r["messages"][-1]["content"] + "<|im_end|>")["input_ids"]) <= run.DemoConfig().max_new_tokens
        n += 1
    assert n == len(raw_choice) > 0  # every multiple-choice question of the set, none lost
    with open(os.path.join(out, "curate", "summary.json")) as f:
        assert json.load(f)["enhanced"]["enhanced"] >= n  # planted copies were enhanced, then removed


@pytest.mark.slow
def test_training_reduces_the_loss(out):
    """Mean loss of the last 5 steps over the first 5: measured 0.27 (5.57 -> 1.49)."""
    log = read_jsonl(os.path.join(out, "run", "log.jsonl"))
    assert len(log) == 40  # 2 epochs of 316 records at global batch 16 = 2 x 20 steps
    first = sum(r["loss"] for r in log[:5]) / 5
    last = sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.4 * first, (first, last)
    assert os.path.isdir(os.path.join(out, "run", "step-000040"))


@pytest.mark.slow
def test_both_models_are_evaluated_with_shuffled_options(out):
    """Every benchmark question scored, and each multiple-choice one (counted in test.jsonl) again shuffled."""
    test = read_jsonl(os.path.join(out, "synth", "test.jsonl"))
    n_mc = sum(bool(r["options"]) for r in test)
    assert 0 < n_mc < len(test)
    for name in ("base", "trained"):
        with open(os.path.join(out, "eval", name, "summary.json")) as f:
            s = json.load(f)["benchmarks"]["synthetic"]
        assert s["base"]["n_scored"] == len(test) == 60
        assert s["base"]["n_mc"] == s["shuffle"]["n_scored"] == n_mc


@pytest.mark.slow
def test_single_lesion_scans_are_captioned_and_checked(out):
    """Each single-lesion benchmark scan is captioned once per model; an attribute is correct when the caption
    names exactly one of its values, the true one. The report's percentages are those of the captions."""
    test = read_jsonl(os.path.join(out, "synth", "test.jsonl"))
    lesion = {r["images"][0]: r["meta"]["lesions"][0] for r in test if len(r["meta"]["lesions"]) == 1}
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    assert "## Lesion attributes named in captions" in report
    rate = {}
    for name in ("base", "trained"):
        rows = read_jsonl(os.path.join(out, "eval", name, "captions.jsonl"))
        assert sorted(r["image"] for r in rows) == sorted(lesion)
        for a, values in ATTRIBUTE_VALUES.items():
            right = 0
            for r in rows:
                words = re.findall(r"[a-z]+", r["caption"].lower())
                named = [v for v in values if v in words]
                assert r["correct"][a] == (named == [lesion[r["image"]][a]]), (a, r)
                right += named == [lesion[r["image"]][a]]
            rate[name, a] = f"{100 * right / len(rows):.1f}"
    chance = {"shape": "33.3", "brightness": "50.0", "size": "50.0", "side": "50.0"}
    for a in ATTRIBUTE_VALUES:
        row = report_row(report, a, "Lesion attributes named in captions")
        assert row == [a, str(len(lesion)), chance[a], rate["base", a], rate["trained", a]]


@pytest.mark.slow
def test_report_accuracy_per_skill_is_that_of_the_per_sample_answers(out):
    """The per-skill rows of report.md: questions per skill (from test.jsonl), chance (written out by hand
    for the skills with one chance value) and each model's share of correct per-sample answers."""
    test = {r["id"]: r for r in read_jsonl(os.path.join(out, "synth", "test.jsonl"))}
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    assert "Table 1" in report and "| trained |" in report
    correct = {}
    for name in ("base", "trained"):
        rows = read_jsonl(os.path.join(out, "eval", name, "synthetic", "base.jsonl"))
        assert sorted(r["id"] for r in rows) == sorted(test)
        for skill in ("modality", "presence", "count", "overall"):
            mine = [r["correct"] for r in rows if skill == "overall" or test[r["id"]]["meta"]["skill"] == skill]
            correct[name, skill] = (len(mine), f"{100 * sum(mine) / len(mine):.1f}")
    for skill, chance in (("modality", "25.0"), ("presence", "50.0"), ("count", "25.0")):
        n = correct["base", skill][0]
        assert n == sum(r["meta"]["skill"] == skill for r in test.values()) > 0
        row = report_row(report, skill, "Accuracy per skill")
        assert row == [skill, str(n), chance, correct["base", skill][1], correct["trained", skill][1]]
    row = report_row(report, "overall", "Accuracy per skill")
    assert row[3:] == [correct["base", "overall"][1], correct["trained", "overall"][1]]


@pytest.mark.slow
def test_plots_and_timings_are_written(out):
    """loss.png (6 x 3.5 in) and accuracy.png (7 x 3.5 in) at 120 dpi, with their data drawn: pixels of the
    second colour of the plot cycle (#ff7f0e) are the smoothed loss curve and the trained model's bars
    (measured: 1,622 and 14,747 pixels; a legend patch alone is 234)."""
    import numpy as np
    for png, size, at_least in (("loss.png", (720, 420), 800), ("accuracy.png", (840, 420), 5000)):
        with Image.open(os.path.join(out, png)) as im:
            assert im.format == "PNG" and im.size == size
            pixels = np.asarray(im.convert("RGB"))
        assert (pixels == (255, 127, 14)).all(-1).sum() >= at_least, png
    with open(os.path.join(out, "timings.json")) as f:
        assert {"data", "model", "vision", "curate", "train", "eval base", "eval trained", "captions base",
                "captions trained", "total"} <= set(json.load(f))
