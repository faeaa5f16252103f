"""Tests for perplexity.py: python -m pytest -q tests/test_perplexity.py"""
import json
import math
import os

import torch

import curate
import perplexity
from data import write_sharegpt
from tally import Tally
# The tiny random model and the image fixtures are shared with the decontamination tests.
from test_decontaminate import smooth_image, tiny, tiny_dir  # noqa: F401


def test_caption_positions_take_the_last_assistant_turn_without_im_end():
    labels = torch.tensor([-100, -100, 5, 6, 9, -100, -100, 7, 8, 4, 9, -100])
    assert perplexity.caption_positions(labels, {9}) == [7, 8, 9]
    assert perplexity.caption_positions(torch.full((4,), -100), {9}) == []


def test_caption_nll_matches_manual_cross_entropy_from_full_logits(tiny):
    model, tok = tiny
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    target = torch.zeros_like(ids, dtype=torch.bool)
    target[0, 5:12], target[1, 3:9], target[2, 1:4] = True, True, True
    sums, counts = perplexity.caption_nll(model, ids, target, mask, chunk=4)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, attention_mask=mask).double(), -1)
    for row in range(3):
        pos = target[row].nonzero().flatten()
        manual = -logp[row, pos - 1, ids[row, pos]].mean()
        assert int(counts[row]) == len(pos)
        assert abs(math.exp(float(sums[row]) / len(pos)) - math.exp(float(manual))) / math.exp(float(manual)) < 1e-5
        # Batched with padding equals the row alone.
        alone, _ = perplexity.caption_nll(model, ids[row:row + 1, :int(mask[row].sum())],
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
    from data import encode
    from image_processor import ImageProcessor
    model, tok = tiny
    proc = ImageProcessor(max_pixels=112 * 112)
    recs = caption_records(tmp_path)
    cfg = perplexity.PerplexityConfig(batch_size=3, min_caption_tokens=1)
    results = perplexity.score_records(recs, model, tok, proc, cfg, Tally("perplexity"))
    for r, res in zip(recs, results):
        s = encode(r, tok, proc)
        pos = torch.tensor(perplexity.caption_positions(s["labels"], {tok.convert_tokens_to_ids("<|im_end|>")}))
        # the scored positions hold exactly the caption's tokens
        assert s["input_ids"][pos].tolist() == tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(s["input_ids"][None], s["pixel_values"], s["image_grid_thw"])[0].double()
        ce = torch.nn.functional.cross_entropy(logits[pos - 1], s["input_ids"][pos])
        assert res["n"] == len(pos)
        assert abs(res["ppl"] - math.exp(float(ce))) / math.exp(float(ce)) < 1e-5


def test_perplexity_selection_percentile_within_source_keeps_unscored_records():
    recs = [{"source": s, "messages": []} for s in ["a"] * 4 + ["b"] * 4 + ["a", "b", "c"]]
    results = [{"ppl": p, "n": 20} for p in [1, 2, 3, 40, 100, 200, 300, 400]] + [
        {"error": "too_short", "n": 2}, {"error": "no_image"}, {"error": "not_applicable"}]
    cfg = perplexity.PerplexityConfig(keep_percentile=75)
    report = Tally("perplexity")
    keep = perplexity.select_by_perplexity(recs, results, cfg, report)
    # 75th percentile per source: a -> 12.25, b -> 325: the worst of each source goes; a record
    # without a score (too short to score, no image, not a caption) stays
    assert keep == [True, True, True, False, True, True, True, False, True, True, True]
    assert report.counts["kept:too_short"] == 1 and report.counts["kept:no_image"] == 1
    assert report.counts["not_applicable"] == 1 and report.counts["dropped:perplexity"] == 2
    assert report.sections["cutoffs"] == {"a": 12.25, "b": 325.0}
    keep = perplexity.select_by_perplexity(recs, results, perplexity.PerplexityConfig(max_ppl=100), Tally("p"))
    assert keep == [True, True, True, True, True, False, False, False, True, True, True]


def test_perplexity_step_is_resumable_and_counts_bad_input(tiny, tmp_path):
    model, tok = tiny
    recs = caption_records(tmp_path, 3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    recs.append({"id": "broken", "source": "roco", "images": [str(broken)],
                 "messages": [{"role": "user", "content": "<image>Describe this medical image."},
                              {"role": "assistant", "content": "x " * 20}]})
    recs.append({"id": "noimg", "source": "roco", "task": "caption",
                 "messages": [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "y " * 20}]})
    recs.append({"id": "qa", "source": "vqa_rad", "images": [recs[0]["images"][0]],  # not a caption: not scored
                 "messages": [{"role": "user", "content": "<image>Is it?"}, {"role": "assistant", "content": "No"}]})
    write_sharegpt(recs, str(tmp_path / "in.jsonl"))
    cfg = perplexity.PerplexityConfig(min_caption_tokens=3, max_pixels=112 * 112, keep_percentile=50)
    out = str(tmp_path / "out.jsonl")
    r1 = curate.run_step("perplexity", str(tmp_path / "in.jsonl"), out, cfg, model=(model, tok))
    assert r1.counts["kept:unscorable"] == 1 and r1.counts["kept:no_image"] == 1
    assert r1.counts["not_applicable"] == 1 and r1.by_source["vqa_rad"] == {"in": 1, "not_applicable": 1, "out": 1}
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


def test_prompt_logprob_scorer_matches_native_scores(tiny, tiny_dir, tmp_path):
    """The vLLM path (a backend's prompt_logprobs) run through evaluate.NativeBackend, which
    offers the same method, gives the same perplexities as the batched native scorer."""
    import evaluate
    from image_processor import ImageProcessor
    model, tok = tiny
    recs = caption_records(tmp_path)
    cfg = perplexity.PerplexityConfig(min_caption_tokens=1)
    native = perplexity.score_records(recs, model, tok, ImageProcessor(max_pixels=112 * 112), cfg, Tally("p"))
    backend = evaluate.NativeBackend(tiny_dir, device="cpu", max_pixels=112 * 112)
    via_logprobs = perplexity.score_with_prompt_logprobs(recs, backend, tok, cfg, Tally("p"))
    for a, b in zip(native, via_logprobs):
        assert a["n"] == b["n"] and abs(a["ppl"] - b["ppl"]) / a["ppl"] < 1e-4


def test_text_histogram_bins_perplexities_on_a_log_scale():
    """Hand computed: log values 0, 0 and 2 over 2 bins of width 1; bars scale to the fullest bin."""
    e2 = math.exp(2)
    assert perplexity.text_histogram([1.0, 1.0, e2], bins=2, width=4).splitlines() == [
        "     1.000 -      2.718 | #### 2",
        "     2.718 -      7.389 | ##   1"]
    assert perplexity.text_histogram([]) == "(no scores)"
