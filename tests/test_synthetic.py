"""The synthetic medical VQA set: disjoint splits, answers derivable from the scene, determinism;
the locally trained tokenizer with the real Qwen special tokens and chat template.

    python -m pytest -q tests/test_synthetic.py
"""
import hashlib
import json
import os
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import conftest
import data
import synthetic as S
from sources import load_source


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    S.generate(out, n_train=600, n_test=150, seed=0, progress=False)
    return out


def pixel_hash(path):
    return hashlib.sha1(np.asarray(Image.open(path)).tobytes()).hexdigest()


def read_jsonl(path):
    return [json.loads(l) for l in open(path)]


def test_splits_share_no_image(synth):
    names = os.listdir(os.path.join(synth, "images"))
    train = {pixel_hash(os.path.join(synth, "images", n)) for n in names if n.startswith("train_")}
    test = {pixel_hash(os.path.join(synth, "images", n)) for n in names if n.startswith("test_")}
    assert len(train) == sum(n.startswith("train_") for n in names)  # no repeats within a split
    assert len(test) == sum(n.startswith("test_") for n in names)
    assert not train & test


def test_split_streams_differ_for_the_same_seed():
    assert S.split_seed(0, "train") != S.split_seed(0, "test")
    assert S.split_seed(0, "test") != S.split_seed(1, "test")


def expected_answer(r):
    """Recompute a record's answer from the stored scene metadata alone."""
    m = r["meta"]
    truth = S.answer_for(m["skill"], m["modality"], m["lesions"])
    if m["form"] == "choice":
        return next(L for L, v in r["options"].items() if v == truth)
    if m["form"] == "closed" and m["skill"] != "presence":
        asked = [v for v in S.CHOICES[m["skill"]] if S.CLOSED_Q[m["skill"]].format(v=v) == r["question"]]
        assert len(asked) == 1
        return "yes" if asked[0] == truth else "no"
    return truth


def test_every_test_answer_is_derivable_from_the_metadata(synth):
    recs = load_source("synthetic", synth, "test")
    assert len(recs) == 150
    for r in recs:
        assert r["answer"] == expected_answer(r), r
        assert os.path.exists(r["images"][0])


def test_lesion_attributes_are_asked_only_with_one_lesion(synth):
    for r in load_source("synthetic", synth, "test"):
        if r["meta"]["skill"] in S.LESION_SKILLS:
            assert len(r["meta"]["lesions"]) == 1


def test_metadata_matches_the_pixels(synth):
    """The scene metadata is what the image shows: intensity, side and size of each lesion."""
    cfg = S.SynthConfig()
    n = cfg.image_size
    seen = {}
    for r in load_source("synthetic", synth, "test"):
        seen[r["meta"]["image_id"]] = (r["images"][0], r["meta"]["lesions"])
    assert any(les for _, les in seen.values())
    for path, lesions in seen.values():
        img = np.asarray(Image.open(path)).astype(float)
        for les in lesions:
            win, mask = S.lesion_mask(les["shape"], les["cx"], les["cy"], les["r"], n)
            mean = img[win][mask].mean()
            assert (mean > 200) if les["brightness"] == "bright" else (mean < 60)
            side = "left" if les["cx"] < n / 2 else "right"
            assert side == les["side"] and abs(les["cx"] - n / 2) >= cfg.side_margin * n
            lo, hi = cfg.small_radius if les["size"] == "small" else cfg.large_radius
            assert lo * n <= les["r"] <= hi * n


def test_train_records_derive_the_same_way():
    cfg = S.SynthConfig()
    for *_, recs in S.make_split("train", 300, seed=5, cfg=cfg):
        for r in recs:
            assert r["answer"] == expected_answer(r)


def test_train_file_is_canonical_sharegpt(synth):
    lines = read_jsonl(os.path.join(synth, "train.jsonl"))
    assert len(lines) == 600
    for s in lines:
        assert [m["role"] for m in s["messages"]] == ["user", "assistant"]
        assert s["messages"][0]["content"].startswith("<image>")
        assert s["messages"][0]["content"].count("<image>") == len(s["images"]) == 1
        assert os.path.exists(os.path.join(synth, s["images"][0]))


def test_every_skill_and_form_is_covered(synth):
    recs = [r for *_, rs in S.make_split("train", 2000, seed=0, cfg=S.SynthConfig()) for r in rs]
    assert set(Counter(r["meta"]["skill"] for r in recs)) == set(S.SKILLS)
    assert set(Counter(r["meta"]["form"] for r in recs)) == {"choice", "closed", "open"}
    assert set(Counter(len(r["meta"]["lesions"]) for r in recs)) == {0, 1, 2, 3}
    assert set(Counter(r["meta"]["modality"] for r in recs)) == set(S.MODALITIES)


def test_options_shuffle_deterministically_from_the_seed():
    def options(seed):
        return [tuple(r["options"].values()) for *_, rs in S.make_split("test", 300, seed, S.SynthConfig())
                for r in rs if r["options"] and r["meta"]["skill"] == "modality"]
    a, b, c = options(0), options(0), options(1)
    assert a == b and a != c
    assert len(set(a)) > 5  # the order really varies between questions


def test_generation_is_reproducible(tmp_path):
    S.generate(str(tmp_path / "b"), n_train=90, n_test=30, seed=7, progress=False)  # overwritten below
    for name in ("a", "b"):
        S.generate(str(tmp_path / name), n_train=30, n_test=10, seed=3, progress=False)
    assert sorted(os.listdir(tmp_path / "a" / "images")) == sorted(os.listdir(tmp_path / "b" / "images"))
    for f in ("train.jsonl", "test.jsonl", "captions.jsonl"):
        assert open(tmp_path / "a" / f).read() == open(tmp_path / "b" / f).read()
    assert pixel_hash(tmp_path / "a" / "images" / "test_000000.png") == pixel_hash(tmp_path / "b" / "images" / "test_000000.png")


def test_one_caption_per_image_describing_the_scene(synth):
    caps = read_jsonl(os.path.join(synth, "captions.jsonl"))
    assert len(caps) == len(os.listdir(os.path.join(synth, "images")))
    meta = {r["meta"]["image_id"]: r["meta"] for r in load_source("synthetic", synth, "test")}
    for c in caps:
        image_id = os.path.splitext(os.path.basename(c["image"]))[0]
        if image_id in meta:
            assert c["caption"] == S.caption(meta[image_id]["modality"], meta[image_id]["lesions"])
    assert S.caption("CT", []) == "A CT scan with no visible lesion."
    two = [{"size": "small", "brightness": "dark", "shape": "circle", "side": "left"},
           {"size": "small", "brightness": "bright", "shape": "square", "side": "right"}]
    assert S.caption("MRI", two) == ("An MRI scan showing two lesions: a small dark circle on the left side; "
                                     "a small bright square on the right side.")


def test_cli_writes_the_set(tmp_path):
    res = CliRunner().invoke(S.main, ["-o", str(tmp_path), "--n-train", "12", "--n-test", "6", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "train: 12 questions on 4 images" in res.output
    assert len(read_jsonl(tmp_path / "test.jsonl")) == 6


# ------------------------------------------------------- captions -> labels, vision pretraining
def test_caption_attributes_reads_each_value_from_the_words():
    said = S.caption_attributes("An MRI scan showing one lesion: a large dark square on the left side.")
    assert said == {"shape": "square", "brightness": "dark", "size": "large", "side": "left"}
    # a word inside another word does not count; two values of one attribute name neither
    said = S.caption_attributes("A CT scan: a small or large circles, brightly lit, leftover.")
    assert said == {"shape": None, "brightness": None, "size": None, "side": None}


def test_caption_labels_invert_the_caption_of_every_scene():
    rng, cfg = np.random.default_rng(0), S.SynthConfig()
    for _ in range(200):
        _, modality, lesions = S.make_scan(rng, cfg)
        labels = S.caption_labels(S.caption(modality, lesions))
        assert labels["modality"] == S.CHOICES["modality"].index(modality)
        assert labels["count"] == len(lesions)
        for a in S.LESION_SKILLS:  # stated only for a single lesion
            assert labels[a] == (S.CHOICES[a].index(lesions[0][a]) if len(lesions) == 1 else -100)


def test_pretrain_vision_teaches_the_tower_only(tok):
    import torch
    from infimed import QwenVL, QwenVLConfig, VisionConfig
    vision = VisionConfig(depth=1, hidden_size=32, out_hidden_size=32, intermediate_size=64, num_heads=2)
    torch.manual_seed(0)
    model = QwenVL(QwenVLConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1, mrope_section=[2, 1, 1], vision=vision))
    cfg, rng = S.SynthConfig(image_size=56), np.random.default_rng(0)
    ip = data.ImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56)
    scans = [S.make_scan(rng, cfg) for _ in range(320)]
    x = torch.stack([ip([Image.fromarray(pixels)])[0] for pixels, _, _ in scans])
    labels = [S.caption_labels(S.caption(m, lesions)) for _, m, lesions in scans]
    y = {k: torch.tensor([r[k] for r in labels]) for k in ("modality", "brightness")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predict = S.pretrain_vision(model, x[:256], torch.tensor([[1, 4, 4]]), {k: v[:256] for k, v in y.items()},
                                steps=150, lr=3e-3, batch=32, seed=0, log=lambda _: None)
    with torch.no_grad():
        out = predict(x[256:])
    acc = {k: float((out[k].argmax(-1) == y[k][256:])[y[k][256:] >= 0].float().mean()) for k in y}
    assert acc["modality"] >= 0.95 and acc["brightness"] >= 0.8, acc  # held out; chance 0.25 and 0.5
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("visual.") for k in changed)
    assert any(k.startswith("visual.blocks.") for k in changed) and any(k.startswith("visual.merger.") for k in changed)


# ----------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = ["Is there a lesion in this CT scan? Yes, a small bright circle on the left side."] * 20
    return S.build_tokenizer(corpus, str(tmp_path_factory.mktemp("tok")), vocab_size=400)


def test_build_tokenizer_appends_qwen_special_tokens_in_real_order(tok):
    ids = [tok.convert_tokens_to_ids(t) for t in data.SPECIAL_TOKENS]
    first = ids[0]
    assert ids == list(range(first, first + len(data.SPECIAL_TOKENS)))  # 151643.. in Qwen2
    assert first == len(tok) - len(data.SPECIAL_TOKENS)  # right after the BPE vocabulary
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None


def test_build_tokenizer_directory_loads_in_transformers_with_chat_template(tok, tmp_path):
    from transformers import AutoTokenizer
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    with open(conftest.shared("qwen2_5_vl_chat_template.jinja")) as f:
        real = f.read()
    assert again.chat_template == real
    assert data.load_tokenizer(str(tmp_path)).encode("<|image_pad|> liver") == tok.encode(
        "<|image_pad|> liver")


def test_chat_template_constant_is_the_real_file_byte_for_byte():
    with open(conftest.shared("qwen2_5_vl_chat_template.jinja")) as f:
        assert S.QWEN2_5_VL_CHAT_TEMPLATE == f.read()


def test_tokenizer_is_byte_level_and_round_trips_any_text(tok):
    text = "Ünïcödé 🩺 CT: 3.5 cm\n\tlesion"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
