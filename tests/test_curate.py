"""Tests for curate.py: python -m pytest -q tests/test_curate.py"""
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import curate
from curate import (COT_PROMPT, CotConfig, DecontamConfig, HashEmbedder, Report, accept_rationale,
                    check_caption, CaptionConfig, decontaminate, enhance_responses, max_similarity,
                    parse_gold, parse_options)

OPTIONS = {"A": "Liver", "B": "Spleen", "C": "Kidney", "D": "Lung"}


# ------------------------------------------------------------------ CoT rejection sampling

@pytest.mark.parametrize("text, ok, reason", [
    ("The organ on the left is the spleen.\n<answer>B</answer>", True, "ok"),
    ("  Reasoning: shape and position match.  <answer>B</answer>  \n", True, "ok"),
    ("Step 1: spleen. <answer>A</answer>", False, "wrong_letter"),
    ("Step 1: it is E. <answer>E</answer>", False, "letter_not_in_options"),
    ("Step 1: spleen. <answer>b</answer>", False, "not_a_letter"),
    ("Step 1: spleen. <answer> B </answer>", False, "not_a_letter"),
    ("Step 1: spleen. <answer>B. Spleen</answer>", False, "not_a_letter"),
    ("<answer>B</answer>", False, "empty_reasoning"),
    ("...  <answer>B</answer>", False, "empty_reasoning"),
    ("Maybe <answer>A</answer> no, <answer>B</answer>", False, "several_answer_tags"),
    ("Spleen. <answer>B</answer> <answer>B</answer>", False, "several_answer_tags"),
    ("Spleen. <answer>B</answer>\nHope this helps!", False, "text_after_answer"),
    ("Spleen. <ANSWER>B</ANSWER>", False, "malformed_tag"),
    ("Spleen. </answer>B<answer>", False, "malformed_tag"),
    ("Spleen. <answer>B", False, "unbalanced_tag"),
    ("The answer is B.", False, "no_answer_tag"),
    ("", False, "empty"),
    (None, False, "empty"),
])
def test_accept_rationale_table(text, ok, reason):
    assert accept_rationale(text, OPTIONS, "B") == (ok, reason)


def test_accept_rationale_minimum_reasoning_length():
    assert accept_rationale("Spleen. <answer>B</answer>", OPTIONS, "B", min_reasoning_chars=20)[1] == "empty_reasoning"
    assert accept_rationale("Spleen. <answer>B</answer>", OPTIONS, "B", min_reasoning_chars=7)[0]


def test_cot_prompt_is_the_papers_appendix_a_text():
    assert COT_PROMPT.startswith("Please carefully analyze the following multiple-choice question")
    assert "e.g., <answer>A</answer>." in COT_PROMPT
    assert COT_PROMPT.endswith("Question:\n\n{QUESTION}")


def test_parse_options_strips_images_and_trailing_instruction():
    text = "<image>Which organ is shown?\nA. Liver\nB. Spleen\nC: Kidney\n(D) Lung\nAnswer with the option's letter."
    stem, opts = parse_options(text)
    assert stem == "Which organ is shown?"
    assert opts == OPTIONS
    assert parse_options("<image>Is this normal?\nAnswer with yes or no.")[1] is None
    assert parse_options("Pick one\nA. x\nC. y")[1] is None  # letters must run A, B, ...


@pytest.mark.parametrize("answer, gold", [("B", "B"), ("(B)", "B"), ("B. Spleen", "B"), ("B: Spleen", "B"),
                                          ("spleen", "B"), ("E", None), ("Bone", None)])
def test_parse_gold(answer, gold):
    assert parse_gold(answer, OPTIONS) == gold


def mc_record(i, gold="B", source="pmc_vqa"):
    q = "<image>Which organ is shown?\nA. Liver\nB. Spleen\nC. Kidney\nD. Lung\nAnswer with the option's letter from the given choices directly."
    return {"id": f"r{i}", "source": source, "images": [f"img{i}.png"],
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": gold}]}


class ScriptedTeacher:
    """Returns scripted samples per request (keyed by call order); raises for 'fail'."""

    def __init__(self, script):
        self.script, self.calls = list(script), []

    def generate(self, requests, max_new_tokens, temperature, top_p, seed, n=1):
        self.calls.append((len(requests), n, temperature))
        out = []
        for _ in requests:
            s = self.script.pop(0)
            if s == "fail":
                raise RuntimeError("teacher crashed")
            out.append(s)
        return out


def test_enhance_keeps_first_accepted_rationale_and_counts_the_rest(tmp_path):
    records = [mc_record(0), mc_record(1), mc_record(2, source="slake"),
               {"id": "cap", "source": "pmc_cap", "images": ["c.png"],
                "messages": [{"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "A CT scan."}]}]
    good1, good2 = "Left upper quadrant: spleen. <answer>B</answer>", "It is the spleen. <answer>B</answer>"
    teacher = ScriptedTeacher([["<answer>A</answer>", good1, good2],        # r0: second sample accepted
                               ["Liver. <answer>A</answer>"] * 3,          # r1: none accepted
                               [good2, good1, "x"]])                       # r2: first accepted
    cfg, report = CotConfig(k=3, temperature=0.7, batch_size=8), Report("cot")
    cache = curate.JsonlCache(str(tmp_path / "c.jsonl"))
    out = enhance_responses(records, teacher, cfg, report, cache)
    assert teacher.calls == [(3, 3, 0.7)]
    assert out[0]["messages"][-1]["content"] == good1
    assert out[0]["messages"][0]["content"] == "<image>" + COT_PROMPT.replace(
        "{QUESTION}", "Which organ is shown?\nA. Liver\nB. Spleen\nC. Kidney\nD. Lung")
    assert out[1] == records[1] and out[3] == records[3]
    assert out[2]["messages"][-1]["content"] == good2
    assert report.by_source["pmc_vqa"]["enhanced"] == 1
    assert report.by_source["pmc_vqa"]["kept:no_accepted_rationale"] == 1
    assert report.by_source["pmc_cap"]["kept:not_multiple_choice"] == 1
    assert report.counts["sample:wrong_letter"] == 4
    assert report.sections["acceptance_rate"] == {"pmc_vqa": 0.5, "slake": 1.0}
    # Resumable: a second run over the same cache calls the teacher for nothing.
    again = ScriptedTeacher([])
    out2 = enhance_responses(records, again, cfg, Report("cot"), curate.JsonlCache(str(tmp_path / "c.jsonl")))
    assert again.calls == []
    assert out2 == out


def test_enhance_teacher_failure_is_counted_and_record_kept():
    records = [mc_record(0), mc_record(1)]
    teacher = ScriptedTeacher(["fail", "fail", ["Spleen. <answer>B</answer>"]])  # batch fails, then r0 fails alone
    report = Report("cot")
    out = enhance_responses(records, teacher, CotConfig(k=1), report)
    assert out[0] == records[0]
    assert out[1]["messages"][-1]["content"] == "Spleen. <answer>B</answer>"
    assert report.counts["teacher_error"] == 1 and report.counts["kept:teacher_error"] == 1


def test_enhance_counts_unparseable_questions_and_gold():
    r = mc_record(0, gold="Bone marrow")
    report = Report("cot")
    enhance_responses([r], ScriptedTeacher([]), CotConfig(), report)
    assert report.counts["kept:gold_not_parsed"] == 1


# ------------------------------------------------------------------ caption refinement

@pytest.mark.parametrize("text, reason", [
    ("An axial CT slice showing a round hypodense lesion in the right liver lobe.", "ok"),
    ("", "empty"), ("   ", "empty"), (None, "empty"),
    ("I'm sorry, but I cannot describe medical images.", "refusal"),
    ("A CT scan.", "too_short"),
    ("word " * 400, "too_long"),
    ("the left lung shows the left lung shows the left lung shows the left lung shows nodules", "repeated"),
])
def test_check_caption(text, reason):
    assert check_caption(text, CaptionConfig()) == (reason == "ok", reason)


def test_refine_captions_keeps_original_when_rejected():
    recs = [{"id": i, "source": "cap", "images": ["a.png"],
             "messages": [{"role": "user", "content": "<image>Describe."},
                          {"role": "assistant", "content": "Fig 1. H&E, x40, tumour cells."}]} for i in range(2)]
    good = "A microscope image of pink tissue with dense purple tumour cells."
    report = Report("caption")
    out = curate.refine_captions(recs, ScriptedTeacher([[good], ["I cannot help with that."]]), CaptionConfig(), report)
    assert out[0]["messages"][-1]["content"] == good and out[1] == recs[1]
    assert report.counts["refined"] == 1 and report.counts["kept:refusal"] == 1


# ------------------------------------------------------------------ instruction augmentation

def test_augment_renders_sources_templates_and_strips_old_instructions():
    import sources
    yesno = {"id": "y", "source": "vqa_rad", "images": ["a.png"],
             "messages": [{"role": "user", "content": "<image>Is the liver enlarged?\nAnswer with yes or no."},
                          {"role": "assistant", "content": "yes"}]}
    long_open = {"id": "c", "images": ["a.png"], "messages": [
        {"role": "user", "content": "<image>What is shown?"},
        {"role": "assistant", "content": "An axial CT of the abdomen with a large cyst in the left kidney."}]}
    report = Report("augment")
    out = curate.augment_records([yesno, mc_record(0), long_open], curate.AugmentConfig(seed=3), report)
    allowed = {"<image>" + t.format(question="Is the liver enlarged?") for t in sources.INSTRUCTIONS["yesno"]}
    assert out[0]["messages"][0]["content"] in allowed  # the old instruction is not kept twice
    assert out[0]["messages"][1]["content"] == "Yes" and out[0]["id"] == "y" and out[0]["source"] == "vqa_rad"
    assert parse_options(out[1]["messages"][0]["content"])[1] == OPTIONS
    assert out[2] == long_open
    assert report.counts == {"augmented:yesno": 1, "augmented:choice": 1, "kept:long_answer": 1}


# ------------------------------------------------------------------ decontamination

def smooth_image(seed, size=224):
    """A smooth random colour image (a 6x6 random field upsampled), so resizing and JPEG keep it."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return small.resize((size, size), Image.BICUBIC)


def test_max_similarity_blocked_equals_full_matrix():
    g = torch.Generator().manual_seed(0)
    train, bench = torch.randn(103, 32, generator=g), torch.randn(17, 32, generator=g) * 3
    full = torch.nn.functional.normalize(train, dim=1) @ torch.nn.functional.normalize(bench, dim=1).T
    for block in (1, 7, 64, 1000):
        vals, idx = max_similarity(train, bench, block=block)
        assert torch.allclose(vals, full.max(1).values, atol=1e-6)
        assert torch.equal(idx, full.argmax(1))


def make_contamination_case(tmp_path):
    """Benchmark of 3 items; train = exact copy, JPEG copy, resized copy (reworded), same image
    with a different question, and 3 unrelated items."""
    paths = {}
    for k in range(8):
        p = tmp_path / f"im{k}.png"
        smooth_image(k).save(p)
        paths[k] = str(p)
    jpg, small = tmp_path / "im1.jpg", tmp_path / "im2_small.png"
    smooth_image(1).save(jpg, quality=75)
    smooth_image(2).resize((150, 150), Image.BILINEAR).save(small)
    qs = ["Is there a fracture of the left femur?", "What organ is enlarged in this image?",
          "Which lobe contains the mass?"]
    bench = [{"id": f"b{k}", "question": qs[k], "images": [paths[k]]} for k in range(3)]

    def rec(rid, img, q):
        return {"id": rid, "source": "vqa", "images": [img],
                "messages": [{"role": "user", "content": "<image>" + q}, {"role": "assistant", "content": "yes"}]}
    train = [rec("exact", paths[0], qs[0]),
             rec("jpeg", str(jpg), qs[1]),
             rec("resized_reworded", str(small), "WHICH lobe contains the mass ??"),
             rec("same_image_other_question", paths[0], "What is the imaging modality used here?"),
             rec("unrelated1", paths[5], "Is the heart size normal?"),
             rec("unrelated2", paths[6], "What is the abnormality in the right kidney?"),
             rec("unrelated3", paths[7], "Which organ is enlarged in this picture?")]
    return train, bench


def test_decontaminate_with_hash_embedder_removes_copies_and_keeps_unrelated(tmp_path):
    train, bench = make_contamination_case(tmp_path)
    report = Report("decontaminate")
    keep, removed = decontaminate(train, bench, HashEmbedder(), DecontamConfig(), report)
    assert [r["id"] for r, k in zip(train, keep) if not k] == ["exact", "jpeg", "resized_reworded"]
    by_id = {r["train"]: r for r in removed}
    assert by_id["exact"]["kind"] == "exact" and by_id["exact"]["bench"] == "b0"
    assert by_id["jpeg"]["bench"] == "b1" and by_id["jpeg"]["score"] > 0.95
    assert by_id["resized_reworded"]["bench"] == "b2"
    assert report.counts["dropped:contaminated"] == 3 and report.counts["kept"] == 4


def test_decontaminate_counts_unreadable_images_and_keeps_them(tmp_path):
    train, bench = make_contamination_case(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    train.append({"id": "broken", "images": [str(bad)], "messages": [{"role": "user", "content": "<image>q"}]})
    report = Report("decontaminate")
    keep, _ = decontaminate(train, bench, HashEmbedder(), DecontamConfig(), report)
    assert keep[-1] and report.counts["train_unreadable_image"] == 1
    assert report.counts["kept:unchecked_unreadable_image"] == 1


# ------------------------------------------------------------------ tiny random model

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer random QwenVL with a small BPE tokenizer carrying the real Qwen special tokens."""
    from data import build_tokenizer
    from infimed import QwenVL, QwenVLConfig, VisionConfig
    d = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer(["Is there a fracture of the left femur? What organ is enlarged in this image? "
                           "Which lobe contains the mass? A CT scan of the abdomen with a liver lesion."] * 5,
                          str(d / "tok"), vocab_size=400)
    ids = tok.convert_tokens_to_ids
    vision = VisionConfig(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2,
                          fullatt_block_indexes=[1])
    cfg = QwenVLConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, mrope_section=[2, 3, 3],
                       image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                       vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
                       bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), vision=vision)
    torch.manual_seed(0)
    return QwenVL(cfg).eval(), tok


def test_model_embedder_is_last_token_hidden_state_of_gme_prompt(tiny, tmp_path):
    from data import ImageProcessor
    model, tok = tiny
    proc = ImageProcessor(max_pixels=112 * 112)
    p = tmp_path / "a.png"
    smooth_image(0).save(p)
    emb = curate.ModelEmbedder(model, tok, proc)
    items = [([str(p)], "Is there a fracture?"), ([], "A much longer text-only query about the liver lesion."),
             ([str(p)], "Which lobe?")]
    batched = emb(items)
    # Manual: one unpadded sequence, the gme chat string with the image expanded to its tokens.
    pv, grid = proc([str(p)])
    n_img = int(grid.prod()) // 4
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
            + "<|image_pad|>" * n_img + "<|vision_end|>Is there a fracture?<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        h = model(ids, pv, grid, return_hidden=True)[0, -1]
    assert torch.allclose(batched[0], torch.nn.functional.normalize(h, dim=0), atol=1e-5)
    for i, item in enumerate(items):  # right padding in a batch changes nothing
        assert torch.allclose(batched[i], emb([item])[0], atol=1e-5)
    assert torch.allclose(batched.norm(dim=1), torch.ones(3), atol=1e-6)


def test_decontaminate_with_model_embedder(tiny, tmp_path):
    """A random model squeezes every similarity toward 1 (each embedding is dominated by the shared
    final <|endoftext|> token and template), so this test scales the paper's 0.95 up to 0.999; what
    it checks is the wiring: copies that miss the exact pass are removed through the embeddings,
    unrelated items are kept, and the nearest benchmark item of each copy is its source."""
    from data import ImageProcessor
    model, tok = tiny
    train, bench = make_contamination_case(tmp_path)
    one_pixel = tmp_path / "im0_edit.png"
    im = smooth_image(0)
    im.putpixel((3, 3), (0, 0, 0))
    im.save(one_pixel)
    qs = [b["question"] for b in bench]
    train = [{"id": "one_pixel", "source": "v", "images": [str(one_pixel)], "messages": [{"role": "user", "content": "<image>" + qs[0]}]},
             {"id": "jpeg", "source": "v", "images": [str(tmp_path / "im1.jpg")], "messages": [{"role": "user", "content": "<image>" + qs[1]}]},
             {"id": "resized", "source": "v", "images": [str(tmp_path / "im2_small.png")], "messages": [{"role": "user", "content": "<image>" + qs[2]}]}
             ] + train[4:]
    emb = curate.ModelEmbedder(model, tok, ImageProcessor(max_pixels=112 * 112))
    report = Report("decontaminate")
    keep, removed = decontaminate(train, bench, emb, DecontamConfig(threshold=0.999), report)
    assert [r["train"] for r in removed] == ["one_pixel", "jpeg"]
    assert all(r["kind"] == "embedding" for r in removed)
    assert keep == [False, False, True, True, True, True]
    copies = emb([(t["images"], curate.query_of(t)) for t in train[:3]])
    _, idx = max_similarity(copies, emb([(b["images"], b["question"]) for b in bench]))
    assert idx.tolist() == [0, 1, 2]


# ------------------------------------------------------------------ perplexity

def test_caption_positions_take_the_last_assistant_turn_without_im_end():
    labels = torch.tensor([-100, -100, 5, 6, 9, -100, -100, 7, 8, 4, 9, -100])
    assert curate.caption_positions(labels, {9}) == [7, 8, 9]
    assert curate.caption_positions(torch.full((4,), -100), {9}) == []


def test_caption_nll_matches_manual_cross_entropy_from_full_logits(tiny):
    model, tok = tiny
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    target = torch.zeros_like(ids, dtype=torch.bool)
    target[0, 5:12], target[1, 3:9], target[2, 1:4] = True, True, True
    sums, counts = curate.caption_nll(model, ids, target, mask, chunk=4)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, attention_mask=mask).double(), -1)
    for row in range(3):
        pos = target[row].nonzero().flatten()
        manual = -logp[row, pos - 1, ids[row, pos]].mean()
        assert int(counts[row]) == len(pos)
        assert abs(math.exp(float(sums[row]) / len(pos)) - math.exp(float(manual))) / math.exp(float(manual)) < 1e-5
        # Batched with padding equals the row alone.
        alone, _ = curate.caption_nll(model, ids[row:row + 1, :int(mask[row].sum())],
                                      target[row:row + 1, :int(mask[row].sum())])
        assert abs(float(alone[0]) - float(sums[row])) < 1e-4


def caption_records(tmp_path, n=5):
    caps = ["A CT scan of the abdomen with a liver lesion in the right lobe.",
            "An axial image of the left femur showing a fracture line.",
            "Which lobe contains the mass? The right upper lobe of the lung.",
            "A chest radiograph with an enlarged heart and clear lungs.",
            "A CT scan of the abdomen."]
    recs = []
    for i in range(n):
        p = tmp_path / f"cap{i}.png"
        smooth_image(10 + i, size=56 + 28 * i).save(p)
        recs.append({"id": f"c{i}", "source": "pmc_cap" if i % 2 else "roco", "images": [str(p)],
                     "messages": [{"role": "user", "content": "<image>Describe this medical image."},
                                  {"role": "assistant", "content": caps[i % len(caps)]}]})
    return recs


def test_perplexity_is_exp_mean_ce_over_exactly_the_caption_tokens(tiny, tmp_path):
    from data import ImageProcessor, encode
    model, tok = tiny
    proc = ImageProcessor(max_pixels=112 * 112)
    recs = caption_records(tmp_path)
    cfg = curate.PerplexityConfig(batch_size=3, min_caption_tokens=1)
    results = curate.score_records(recs, model, tok, proc, cfg, Report("perplexity"))
    for r, res in zip(recs, results):
        s = encode(r, tok, proc)
        pos = torch.tensor(curate.caption_positions(s["labels"], {tok.convert_tokens_to_ids("<|im_end|>")}))
        # the scored positions hold exactly the caption's tokens
        assert s["input_ids"][pos].tolist() == tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(s["input_ids"][None], s["pixel_values"], s["image_grid_thw"])[0].double()
        ce = torch.nn.functional.cross_entropy(logits[pos - 1], s["input_ids"][pos])
        assert res["n"] == len(pos)
        assert abs(res["ppl"] - math.exp(float(ce))) / math.exp(float(ce)) < 1e-5


def test_perplexity_selection_percentile_within_source_and_min_length():
    recs = [{"source": s, "messages": []} for s in ["a"] * 4 + ["b"] * 4 + ["a", "b"]]
    results = [{"ppl": p, "n": 20} for p in [1, 2, 3, 40, 100, 200, 300, 400]] + [
        {"error": "too_short", "n": 2}, {"error": "no_image"}]
    cfg = curate.PerplexityConfig(keep_percentile=75)
    report = Report("perplexity")
    keep = curate.select_by_perplexity(recs, results, cfg, report)
    # 75th percentile per source: a -> 12.25, b -> 325: the worst of each source goes
    assert keep == [True, True, True, False, True, True, True, False, False, True]
    assert report.counts["dropped:too_short"] == 1 and report.counts["kept:no_image"] == 1
    assert "|" in report.sections["histogram"]
    keep = curate.select_by_perplexity(recs, results, curate.PerplexityConfig(max_ppl=100), Report("p"))
    assert keep == [True, True, True, True, True, False, False, False, False, True]


def test_perplexity_step_is_resumable_and_counts_bad_input(tiny, tmp_path):
    model, tok = tiny
    recs = caption_records(tmp_path, 3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    recs.append({"id": "broken", "source": "roco", "images": [str(broken)],
                 "messages": [{"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "x " * 20}]})
    recs.append({"id": "noimg", "source": "roco", "messages": [{"role": "user", "content": "Describe."},
                                                              {"role": "assistant", "content": "y " * 20}]})
    curate.write_records(recs, str(tmp_path / "in.jsonl"))
    cfg = curate.PerplexityConfig(min_caption_tokens=3, max_pixels=112 * 112, keep_percentile=50)
    out = str(tmp_path / "out.jsonl")
    r1 = curate.run_step("perplexity", str(tmp_path / "in.jsonl"), out, cfg, model=(model, tok))
    assert r1.counts["kept:unscorable"] == 1 and r1.counts["kept:no_image"] == 1
    scores = [json.loads(l) for l in open(tmp_path / "out.scores.jsonl")]
    assert [s["id"] for s in scores] == ["c0", "c1", "c2", "broken", "noimg"]

    class Exploding:
        config = model.config

        def __call__(self, *a, **k):
            raise AssertionError("a cached score was recomputed")
    r2 = curate.run_step("perplexity", str(tmp_path / "in.jsonl"), out, cfg, model=(Exploding(), tok))
    assert [json.loads(l) for l in open(tmp_path / "out.scores.jsonl")] == scores
    assert r2.counts == r1.counts
    assert json.load(open(tmp_path / "out.report.json"))["counts"]["output_records"] == r2.counts["output_records"]
    assert os.path.exists(tmp_path / "out.report.md")


# ------------------------------------------------------------------ steps, files, pipeline

@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    """The tiny model saved as a checkpoint directory that evaluate.NativeBackend loads."""
    model, tok = tiny
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(str(ckpt))
    tok.save_pretrained(str(ckpt))
    return str(ckpt)


def test_prompt_logprob_scorer_matches_native_scores(tiny, tiny_dir, tmp_path):
    """The vLLM path (a backend's prompt_logprobs) run through evaluate.NativeBackend, which
    offers the same method, gives the same perplexities as the batched native scorer."""
    import evaluate
    from data import ImageProcessor
    model, tok = tiny
    recs = caption_records(tmp_path)
    cfg = curate.PerplexityConfig(min_caption_tokens=1)
    native = curate.score_records(recs, model, tok, ImageProcessor(max_pixels=112 * 112), cfg, Report("p"))
    backend = evaluate.NativeBackend(tiny_dir, device="cpu", max_pixels=112 * 112)
    via_logprobs = curate.score_with_prompt_logprobs(recs, backend, tok, cfg, Report("p"))
    for a, b in zip(native, via_logprobs):
        assert a["n"] == b["n"] and abs(a["ppl"] - b["ppl"]) / a["ppl"] < 1e-4


def test_pipeline_runs_steps_in_order_with_reports(tiny_dir, tmp_path):
    """augment -> decontaminate (hash) -> cot with the native backend on a saved random model:
    every step writes its output and its reports; nothing disappears without a count."""
    from click.testing import CliRunner
    ckpt = tiny_dir
    train, bench = make_contamination_case(tmp_path)
    train.append(mc_record(9))
    train[-1]["images"] = train[0]["images"]
    train.append({"id": "bad", "images": ["x.png"], "messages": [{"role": "user", "content": "<image><image>q"},
                                                                 {"role": "assistant", "content": "a"}]})
    curate.write_records(train, str(tmp_path / "in.jsonl"))
    with open(tmp_path / "bench.jsonl", "w") as f:
        f.writelines(json.dumps(b) + "\n" for b in bench)
    spec = {"steps": [{"step": "augment", "in": str(tmp_path / "in.jsonl"), "out": str(tmp_path / "a.jsonl")},
                      {"step": "decontaminate", "out": str(tmp_path / "b.jsonl"), "bench": [str(tmp_path / "bench.jsonl")]},
                      {"step": "cot", "out": str(tmp_path / "c.jsonl"), "teacher": str(ckpt), "k": 2,
                       "max_new_tokens": 4}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = CliRunner().invoke(curate.cli, ["pipeline", str(tmp_path / "spec.json")])
    assert res.exit_code == 0, res.output
    a = json.load(open(tmp_path / "a.report.json"))
    assert a["counts"]["dropped:invalid_record:image_count_mismatch"] == 1 and a["counts"]["output_records"] == 8
    b = json.load(open(tmp_path / "b.report.json"))
    assert b["counts"]["dropped:contaminated"] == 3 and b["counts"]["output_records"] == 5
    assert len(open(tmp_path / "b.dropped.jsonl").readlines()) == 3
    c = json.load(open(tmp_path / "c.report.json"))
    assert c["counts"]["multiple_choice"] == 1 and c["counts"]["output_records"] == 5
    assert sum(v for k, v in c["counts"].items() if k.startswith("sample:")) == 2  # k samples judged
    out = [json.loads(l) for l in open(tmp_path / "c.jsonl")]
    assert [r["id"] for r in out] == ["same_image_other_question", "unrelated1", "unrelated2", "unrelated3", "r9"]
    assert "## removed" in open(tmp_path / "b.report.md").read()


def test_pipeline_rejects_unknown_settings(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"steps": [{"step": "cot", "in": "x", "out": "y", "kk": 3}]}))
    with pytest.raises(Exception, match="unknown settings"):
        curate.run_pipeline(str(tmp_path / "spec.json"))


def test_decontaminate_step_with_checkpoint_embedder_is_resumable(tiny_dir, tmp_path):
    train, bench = make_contamination_case(tmp_path)
    curate.write_records(train, str(tmp_path / "in.jsonl"))
    with open(tmp_path / "bench.jsonl", "w") as f:
        f.writelines(json.dumps(b) + "\n" for b in bench)
    cfg = DecontamConfig(bench=[str(tmp_path / "bench.jsonl")], embedder=tiny_dir, threshold=0.999,
                         min_pixels=56 * 56, max_pixels=112 * 112)
    out = str(tmp_path / "out.jsonl")
    first = curate.run_step("decontaminate", str(tmp_path / "in.jsonl"), out, cfg)
    assert first.counts["dropped:contaminated"] >= 2  # the exact copy and the JPEG copy
    assert os.listdir(tmp_path / "out.cache")

    from data import ImageProcessor
    model, tok = curate._load_model(tiny_dir, "float32", "cpu")
    same = curate.ModelEmbedder(model, tok, ImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
                                name=os.path.abspath(tiny_dir))

    class Refuses:  # same cache identity as the step's embedder, but must not be called
        name = same.name

        def __call__(self, items):
            raise AssertionError("cached embeddings were recomputed")
    second = curate.run_step("decontaminate", str(tmp_path / "in.jsonl"), out, cfg, embedder=Refuses())
    assert second.sections["removed"] == first.sections["removed"]
