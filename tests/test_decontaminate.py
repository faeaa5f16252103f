"""Tests for decontaminate.py: python -m pytest -q tests/test_decontaminate.py"""
import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import curate
import decontaminate as dc
from data import write_sharegpt
import prompts
from curate import load_model
from decontaminate import DecontamConfig, HashEmbedder, ModelEmbedder, decontaminate, max_similarity, query_of, run_step
from tally import Tally


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


def write_case(tmp_path, train, bench):
    """in.jsonl (ShareGPT) and bench.jsonl (load_source-style lines) -> their paths."""
    write_sharegpt(train, str(tmp_path / "in.jsonl"))
    with open(tmp_path / "bench.jsonl", "w") as f:
        f.writelines(json.dumps(b) + "\n" for b in bench)
    return str(tmp_path / "in.jsonl"), str(tmp_path / "bench.jsonl")


def test_decontaminate_with_hash_embedder_removes_copies_and_keeps_unrelated(tmp_path):
    train, bench = make_contamination_case(tmp_path)
    report = Tally("decontaminate")
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
    report = Tally("decontaminate")
    keep, _ = decontaminate(train, bench, HashEmbedder(), DecontamConfig(), report)
    assert keep == [False, False, False, True, True, True, True, True]  # the three copies go, "broken" stays
    assert report.counts["train_unreadable_image"] == 1
    assert report.counts["kept:unchecked_unreadable_image"] == 1


class TableEmbedder:
    """Embeds an item by looking its question up in a hand-written table of vectors."""
    name = "table"

    def __init__(self, table):
        self.table = table

    def __call__(self, items):
        return torch.stack([self.table[question] for _, question in items])


def signs(flipped, dim=16):
    """A vector of +1 with its first `flipped` entries -1: against all +1 its cosine is
    (dim - 2 * flipped) / dim, a multiple of 1/8 that fp32 holds exactly."""
    v = torch.ones(dim)
    v[:flipped] = -1
    return v


def test_threshold_is_strict_a_score_equal_to_it_is_kept():
    """Paper section 3: pairs whose similarity *exceeds* the threshold are excluded. With exact
    cosines 0.875, 0.75 and 0.625 to the benchmark item: at threshold 0.75 the 0.75 item stays;
    with the threshold one float step below 0.75 it goes, one step above (the score just below the
    threshold) it stays."""
    table = {"benchmark question": signs(0), "scores 0.875": signs(1), "scores 0.75": signs(2),
             "scores 0.625": signs(3)}
    bench = [{"id": "b0", "question": "benchmark question", "images": []}]
    train = [{"id": q, "messages": [{"role": "user", "content": q}]} for q in list(table)[1:]]

    def removed_at(threshold):
        _, removed = decontaminate(train, bench, TableEmbedder(table), DecontamConfig(threshold=threshold),
                                   Tally("decontaminate"))
        return {r["train"]: r["score"] for r in removed}
    assert removed_at(0.75) == {"scores 0.875": 0.875}
    assert removed_at(math.nextafter(0.75, 0)) == {"scores 0.875": 0.875, "scores 0.75": 0.75}
    assert removed_at(math.nextafter(0.75, 1)) == {"scores 0.875": 0.875}


def test_step_reads_relative_image_paths_against_each_jsonl_folder(tmp_path, monkeypatch):
    """Training and benchmark JSONL files name their images relative to their own folder: run
    from another working directory, the step still reads both images and removes the copy (an
    image it could not read would leave the record unchecked, counted apart)."""
    for folder, name, seed in (("train/imgs", "0.png", 0), ("train/imgs", "1.png", 5), ("bench/pics", "b.png", 0)):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        smooth_image(seed).save(tmp_path / folder / name)
    question = "Is there a fracture of the left femur?"

    def rec(rid, image, q):
        return {"id": rid, "images": [image], "messages": [{"role": "user", "content": "<image>" + q},
                                                           {"role": "assistant", "content": "yes"}]}
    write_sharegpt([rec("copy", "imgs/0.png", question), rec("other", "imgs/1.png", "Is the heart size normal?")],
                   str(tmp_path / "train" / "in.jsonl"))
    (tmp_path / "bench" / "bench.jsonl").write_text(
        json.dumps({"id": "b0", "question": question, "images": ["pics/b.png"]}) + "\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = str(tmp_path / "out" / "out.jsonl")
    report = run_step(str(tmp_path / "train" / "in.jsonl"), out, DecontamConfig(bench=[str(tmp_path / "bench" /
                                                                                        "bench.jsonl")]))
    assert [(r["train"], r["kind"], r["bench"]) for r in report.sections["removed"]] == [("copy", "exact", "b0")]
    assert dict(report.counts) == {"in": 2, "dropped:contaminated": 1, "kept": 1, "output_records": 1}
    from data import read_sharegpt
    kept = read_sharegpt(out)[0]
    assert [r["id"] for r in kept] == ["other"] and os.path.exists(kept[0]["images"][0])


# ------------------------------------------------------------------ tiny random model

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer random QwenVL with a small BPE tokenizer carrying the real Qwen special tokens."""
    return tiny_qwen(["Is there a fracture of the left femur? What organ is enlarged in this image? "
                      "Which lobe contains the mass? A CT scan of the abdomen with a liver lesion."] * 5,
                     str(tmp_path_factory.mktemp("tiny") / "tok"))


def tiny_qwen(corpus, tok_dir):
    """(model in eval mode, tokenizer): 2 decoder layers of width 64, a 2-block vision tower of
    width 32, random weights (seed 0); the tokenizer is saved to tok_dir."""
    from demo.synthetic import build_tokenizer
    from infimed import QwenVL, QwenVLConfig, VisionConfig
    tok = build_tokenizer(corpus, tok_dir, vocab_size=400)
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
    from image_processor import ImageProcessor
    model, tok = tiny
    proc = ImageProcessor(max_pixels=112 * 112)
    p = tmp_path / "a.png"
    smooth_image(0).save(p)
    emb = ModelEmbedder(model, tok, proc)
    items = [([str(p)], "Is there a fracture?"), ([], "A much longer text-only query about the liver lesion."),
             ([str(p)], "Which lobe?")]
    batched = emb(items)
    # Manual: one unpadded sequence, the gme chat string with the image expanded to its tokens.
    pv, grid = proc([str(p)])
    n_img = int(grid.prod()) // 4
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
            + "<|image_pad|>" * n_img
            + "<|vision_end|>Is there a fracture?<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
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
    it checks is the wiring: the copies that miss the exact pass (one pixel changed, JPEG) are
    removed through the embeddings, unrelated items are kept, and the nearest benchmark item of
    each copy is its source.

    Known miss, asserted as such: the resized copy (224 -> 150 pixels, so another patch grid)
    scores 0.994801 with this random model, below the 0.999 threshold, and is kept. An unrelated
    item scores higher (0.995438), so no threshold separates the two on a random model: catching
    resized copies needs a trained embedder. The model-free HashEmbedder removes the same copy
    (test_decontaminate_with_hash_embedder_removes_copies_and_keeps_unrelated)."""
    from image_processor import ImageProcessor
    model, tok = tiny
    train, bench = make_contamination_case(tmp_path)
    one_pixel = tmp_path / "im0_edit.png"
    im = smooth_image(0)
    im.putpixel((3, 3), (0, 0, 0))
    im.save(one_pixel)
    qs = [b["question"] for b in bench]
    train = [{"id": rid, "source": "v", "images": [str(image)],
              "messages": [{"role": "user", "content": "<image>" + q}]}
             for rid, image, q in [("one_pixel", one_pixel, qs[0]), ("jpeg", tmp_path / "im1.jpg", qs[1]),
                                   ("resized", tmp_path / "im2_small.png", qs[2])]] + train[4:]
    emb = ModelEmbedder(model, tok, ImageProcessor(max_pixels=112 * 112))
    report = Tally("decontaminate")
    keep, removed = decontaminate(train, bench, emb, DecontamConfig(threshold=0.999), report)
    assert [r["train"] for r in removed] == ["one_pixel", "jpeg"]
    assert all(r["kind"] == "embedding" for r in removed)
    assert keep == [False, False, True, True, True, True]  # the third, the resized copy, is the known miss
    copies = emb([(t["images"], query_of(t)) for t in train[:3]])
    score, idx = max_similarity(copies, emb([(b["images"], b["question"]) for b in bench]))
    assert idx.tolist() == [0, 1, 2]
    assert score[2] < 0.999 < score[1]  # measured: resized 0.994801, JPEG 0.999997


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    """The tiny model saved as a checkpoint directory that evaluate.NativeBackend loads."""
    model, tok = tiny
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(str(ckpt))
    tok.save_pretrained(str(ckpt))
    return str(ckpt)



def test_decontaminate_step_with_checkpoint_embedder_is_resumable(tiny_dir, tmp_path):
    in_path, bench_path = write_case(tmp_path, *make_contamination_case(tmp_path))
    cfg = DecontamConfig(bench=[bench_path], embedder=tiny_dir, threshold=0.999,
                         min_pixels=56 * 56, max_pixels=112 * 112)
    out = str(tmp_path / "out.jsonl")
    first = run_step(in_path, out, cfg)
    # The exact copy goes by the exact pass, the JPEG copy by its embedding (measured 0.999997);
    # the resized, reworded copy scores 0.988494 < 0.999 and stays: the random model's known miss
    # (test_decontaminate_with_model_embedder). Everything else is kept.
    assert [(r["train"], r["kind"], r["bench"]) for r in first.sections["removed"]] == [
        ("exact", "exact", "b0"), ("jpeg", "embedding", "b1")]
    assert [json.loads(line)["id"] for line in open(out)] == [
        "resized_reworded", "same_image_other_question", "unrelated1", "unrelated2", "unrelated3"]
    assert os.listdir(tmp_path / "out.cache")

    from image_processor import ImageProcessor
    model, tok = load_model(tiny_dir, "float32", "cpu")
    same = ModelEmbedder(model, tok, ImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
                         name=os.path.abspath(tiny_dir))

    class Refuses:  # same cache identity as the step's embedder, but must not be called
        name = same.name

        def __call__(self, items):
            raise AssertionError("cached embeddings were recomputed")
    second = run_step(in_path, out, cfg, embedder=Refuses())
    assert second.sections["removed"] == first.sections["removed"]


def test_query_of_strips_image_tags_options_and_added_instructions():
    bench = {"question": "<image>Is the liver enlarged?", "images": []}
    yesno = {"messages": [{"role": "user", "content": "<image>Answer the following question with yes or no. "
                                                      "Is the liver enlarged?"}]}
    choice = {"messages": [{"role": "user", "content": "<image>Is the liver enlarged?\nA. yes\nB. no\n"
                                                       "Answer with the letter of the correct option only."}]}
    assert query_of(bench) == query_of(yesno) == query_of(choice) == "Is the liver enlarged?"
    assert query_of({"messages": [{"role": "assistant", "content": "x"}]}) == ""


def test_standalone_command_equals_curate_subcommand(tmp_path):
    in_path, bench_path = write_case(tmp_path, *make_contamination_case(tmp_path))
    args = [in_path, None, "--bench", bench_path, "--threshold", "0.95"]
    for name, command in [("alone", dc.main), ("curate", curate._cli())]:
        args[1] = str(tmp_path / f"{name}.jsonl")
        res = CliRunner().invoke(command, (["decontaminate"] if name == "curate" else []) + args)
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["dropped:contaminated"] == 3
    alone, via_curate = (open(tmp_path / f"{n}.jsonl").read() for n in ("alone", "curate"))
    assert alone == via_curate and len(alone.splitlines()) == 4
    report = json.load(open(tmp_path / "alone.report.json"))
    assert [r["train"] for r in report["removed"]] == ["exact", "jpeg", "resized_reworded"]
    assert len(open(tmp_path / "alone.dropped.jsonl").readlines()) == 3


def test_step_without_benchmark_is_a_usage_error(tmp_path):
    write_sharegpt(make_contamination_case(tmp_path)[0], str(tmp_path / "in.jsonl"))
    res = CliRunner().invoke(dc.main, [str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")])
    assert res.exit_code == 2 and "--bench" in res.output


def test_query_of_reads_the_original_question_through_every_rewrite():
    """A chain-of-thought rewrite wraps the question in the appendix A prompt; the record keeps
    its original question (remember_original), and without it the prompt is unwrapped."""
    question = "Which organ is enlarged?\nA. Liver\nB. Spleen"
    cot_turn = "<image>" + prompts.COT_PROMPT.replace("{QUESTION}", question)
    rewritten = {"messages": [{"role": "user", "content": cot_turn}, {"role": "assistant", "content": "x"}]}
    assert query_of(rewritten) == "Which organ is enlarged?"
    assert query_of({**rewritten, "original": {"question": "What is enlarged in this CT?", "options": None}}) == \
        "What is enlarged in this CT?"
    plain = {"messages": [{"role": "user", "content": "<image>Is the liver enlarged?\nAnswer with yes or no."}]}
    assert curate.remember_original(plain)["original"] == {"question": "Is the liver enlarged?", "options": None}
    again = curate.remember_original({**plain, "messages": [{"role": "user", "content": "<image>Other?"}]})
    assert again["original"]["question"] == "Is the liver enlarged?"  # stored once, never overwritten


def test_benchmark_item_planted_in_training_data_is_removed_after_augmentation_and_cot(tmp_path):
    """The leak the paper's decontamination exists for, through the recipe's rewrites: a
    benchmark question copied into PMC-VQA-style training data, then augmented and rewritten as a
    chain-of-thought prompt, still matches exactly (same pixels, same original question)."""
    train, bench = make_contamination_case(tmp_path)
    leak = {"id": "leak", "source": "pmc_vqa", "images": bench[1]["images"],
            "messages": [{"role": "user", "content": "<image>" + bench[1]["question"] +
                          "\nA. Liver\nB. Spleen\nAnswer with the option's letter from the given choices directly."},
                         {"role": "assistant", "content": "A"}]}
    aug = curate.augment_records([leak], curate.AugmentConfig(seed=1), Tally("a"))

    class Teacher:
        def generate(self, requests, **kw):
            return [["The liver is large. <answer>A</answer>"] for _ in requests]
    cot = curate.enhance_responses(aug, Teacher(), curate.CotConfig(k=1), Tally("c"))
    assert prompts.COT_PROMPT[:30] in cot[0]["messages"][0]["content"]
    report = Tally("decontaminate")
    keep, removed = decontaminate(cot + train[4:], bench, None, DecontamConfig(), report)
    assert keep == [False, True, True, True]  # train[4:] = three unrelated items
    assert removed[0]["kind"] == "exact" and removed[0]["bench"] == "b1"
