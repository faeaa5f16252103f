"""The shortened demo end to end (`python demo.py --quick`): every stage leaves its outputs, the
planted benchmark items are removed by curation, training lowers the loss, and the report and
plots are written. One demo run (about 1-2 minutes on 2 cores) serves all the checks."""
import json
import os
import subprocess
import sys

import pytest

import demo
import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "demo_out")
    proc = subprocess.run([sys.executable, "demo.py", "--quick", "--out", out], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_synthetic_data_has_train_test_and_captions(out):
    synth = os.path.join(out, "synth")
    train, test = read_jsonl(os.path.join(synth, "train.jsonl")), read_jsonl(os.path.join(synth, "test.jsonl"))
    captions = read_jsonl(os.path.join(synth, "captions.jsonl"))
    assert len(train) == 240 and len(test) == 60
    assert {c["split"] for c in captions} == {"train", "test"}
    assert all(os.path.exists(os.path.join(synth, r["images"][0])) for r in test)


def test_base_checkpoint_is_a_hub_style_directory(out):
    files = set(os.listdir(os.path.join(out, "base")))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json"} <= files
    with open(os.path.join(out, "base", "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "qwen2_5_vl" and cfg["vocab_size"] % 64 == 0


def test_base_checkpoint_has_a_pretrained_vision_tower_and_a_fresh_decoder(out):
    import torch
    from infimed import QwenVL
    base = QwenVL.from_pretrained(os.path.join(out, "base"))
    torch.manual_seed(demo.DemoConfig().seed)  # the seed stage_model initialises with
    fresh = QwenVL(base.config)
    same = {k for k, v in base.state_dict().items() if torch.equal(v, fresh.state_dict()[k])}
    assert all(not k.startswith("visual.") for k in same)  # tower and merger were trained
    assert all(k in same for k in base.state_dict() if not k.startswith("visual."))
    with open(os.path.join(out, "vision_probe.json")) as f:
        assert set(json.load(f)) == set(synthetic.CHOICES)  # one probe per caption label


def test_vision_pretraining_rerun_starts_from_the_same_init(out):
    """Rerunning the stage (its marker gone) pretrains the stage-2 random init again, not the tower
    it already pretrained. Two runs agree closely but not bit for bit: the demo ran the first in
    another process, and multi-threaded float sums in the backward pass need not add up in the
    same order (measured: about one run in three differed, by at most 6e-5 after the quick run's 40
    steps). Pretraining on top of the pretrained tower moves weights by 2e-2."""
    import data
    from infimed import QwenVL
    paths = demo.demo_paths(out)
    cfg = demo.replace(demo.DemoConfig(out=out), **demo.QUICK)
    first = QwenVL.from_pretrained(paths["base"]).state_dict()
    os.remove(paths["vision_done"])  # as if a setting had changed: the stage runs again
    demo.stage_vision(cfg, paths)
    model = QwenVL.from_pretrained(paths["base"])
    again = {k: v.clone() for k, v in model.state_dict().items()}
    drift = lambda a, b: max(float((a[k] - b[k]).abs().max()) for k in a)
    assert drift(first, again) <= 1e-3
    # what the stage must not do: continue from its own output
    x, grid, labels = demo.caption_set(paths, "train", data.ImageProcessor.from_pretrained(paths["base"]))
    synthetic.pretrain_vision(model, x, grid, labels, cfg.vision_steps, cfg.vision_lr, cfg.vision_batch, cfg.seed,
                              log=lambda line: None)
    assert drift(again, model.state_dict()) >= 1e-2


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
    import evaluate
    options = {"A": "CT", "B": "MRI", "C": "X-ray"}
    assert demo.option_check(options, "B") == "MRI\nA. CT: no\nB. MRI: yes\n<answer>B</answer>"
    assert demo.option_check(options, "A") == "CT\nA. CT: yes\n<answer>A</answer>"
    assert all(evaluate.parse_choice(demo.option_check(options, g), options) == g for g in options)


def test_enhancement_rewrites_choice_answers_only_and_counts_them():
    choice = {"messages": [{"role": "user", "content": "<image>Which modality?\nA. CT\nB. MRI\n"
                                                       "Answer with the option's letter."},
                           {"role": "assistant", "content": "B"}], "images": ["x.png"]}
    open_q = {"messages": [{"role": "user", "content": "<image>Which modality?"},
                           {"role": "assistant", "content": "MRI"}], "images": ["x.png"]}
    out, counts = demo.enhance_choice_answers([choice, open_q])
    assert counts == {"enhanced": 1, "kept:not_multiple_choice": 1}
    assert out[0]["messages"][0] == choice["messages"][0]  # the question stays as it was
    assert out[0]["messages"][1]["content"] == "MRI\nA. CT: no\nB. MRI: yes\n<answer>B</answer>"
    assert out[1] == open_q


def test_every_trained_choice_answer_is_an_option_check_within_the_generation_budget(out):
    import decontaminate
    from data import load_tokenizer
    tok = load_tokenizer(os.path.join(out, "base"))
    n = 0
    for r in read_jsonl(os.path.join(out, "curate", "train.jsonl")):
        _, options = decontaminate.parse_options(r["messages"][-2]["content"])
        if options:
            answer = r["messages"][-1]["content"]
            gold = answer.rsplit("<answer>", 1)[-1][0]
            assert answer == demo.option_check(options, gold)
            assert len(tok(answer + "<|im_end|>")["input_ids"]) <= demo.DemoConfig().max_new_tokens
            n += 1
    with open(os.path.join(out, "curate", "summary.json")) as f:
        assert json.load(f)["enhanced"]["enhanced"] >= n > 0  # exact planted copies leave after it


def test_training_reduces_the_loss(out):
    log = read_jsonl(os.path.join(out, "run", "log.jsonl"))
    assert len(log) == 40  # 2 epochs of 316 records at global batch 16 = 2 x 20 steps
    first = sum(r["loss"] for r in log[:5]) / 5
    last = sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.8 * first
    assert os.path.isdir(os.path.join(out, "run", "step-000040"))


def test_both_models_are_evaluated_with_shuffled_options(out):
    for name in ("base", "trained"):
        with open(os.path.join(out, "eval", name, "summary.json")) as f:
            s = json.load(f)["benchmarks"]["synthetic"]
        assert s["base"]["n_scored"] == 60
        assert s["shuffle"]["n_scored"] == s["base"]["n_mc"] > 0


def test_single_lesion_scans_are_captioned_and_checked(out):
    test = read_jsonl(os.path.join(out, "synth", "test.jsonl"))
    lesion = {r["images"][0]: r["meta"]["lesions"][0] for r in test if len(r["meta"]["lesions"]) == 1}
    for name in ("base", "trained"):
        rows = read_jsonl(os.path.join(out, "eval", name, "captions.jsonl"))
        assert sorted(r["image"] for r in rows) == sorted(lesion)
        for r in rows:
            assert r["named"] == synthetic.caption_attributes(r["caption"])
            assert r["correct"] == {a: r["named"][a] == lesion[r["image"]][a] for a in r["named"]}
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    assert "## Lesion attributes named in captions" in report
    for a in ("shape", "brightness", "size", "side"):
        assert f"| {a} | {len(lesion)} |" in report


def test_report_and_plots_are_written(out):
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    assert "Table 1" in report and "| trained |" in report
    for skill in ("modality", "presence", "count"):
        assert f"| {skill} |" in report
    for png in ("loss.png", "accuracy.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "timings.json")) as f:
        assert {"data", "model", "vision", "curate", "train", "eval base", "eval trained", "captions base",
                "captions trained", "total"} <= set(json.load(f))

