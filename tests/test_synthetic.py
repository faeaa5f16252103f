"""The synthetic medical VQA set: disjoint splits, answers and captions that state what the pixels show,
determinism; the locally trained tokenizer with the real Qwen special tokens and chat template.

Expected answers and captions never come from the generator itself: they come from scenes written out
by hand below, or from `read_scan`, which finds the modality and the lesions in the saved pixels with
thresholds and hand-chosen cuts.

    python -m pytest -q tests/test_synthetic.py
"""
import functools
import hashlib
import json
import os
import random
import re
from collections import Counter, deque

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

import conftest
import data
from demo import synthetic as S
from image_processor import ImageProcessor
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


# ------------------------------------------------------------- reading a scan from its pixels
# The cuts below were chosen by hand between the ranges measured on 5,000 generated 112-px scans.
# Tissue lies in ~45-230 (CT's bone ring ~225), bright lesions at ~240, dark ones at ~20, air at ~0-5.
BRIGHT_ABOVE, DARK_BAND = 200, (8, 45)
OPEN_PX = 5  # a 5 x 5 opening removes CT's 4-px bone ring, speckle and air noise; lesions are >= 31 px wide


def opened(mask):
    """Morphological opening of a bool mask by an OPEN_PX square; outside the image counts as False."""
    k = OPEN_PX
    im = Image.fromarray(np.pad(mask, k).astype(np.uint8) * 255)
    return (np.asarray(im.filter(ImageFilter.MinFilter(k)).filter(ImageFilter.MaxFilter(k))) > 0)[k:-k, k:-k]


def blobs(mask):
    """4-connected components of a bool mask, each an array of (y, x)."""
    seen, out = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], todo, blob = True, deque([start]), []
        while todo:
            y, x = todo.popleft()
            blob.append((y, x))
            for v, u in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    todo.append((v, u))
        out.append(np.array(blob))
    return out


def read_modality(img):
    """Measured: mean of the four 4x4 corners is 125-147 for X-ray, below 8 for the rest; the bottom
    centre (3 x 6 px) is 0 for ultrasound (outside the sector), 99-160 for MRI, 220-229 for CT (bone)."""
    n = len(img)
    corners = np.concatenate([img[:4, :4], img[:4, -4:], img[-4:, :4], img[-4:, -4:]]).mean()
    bottom = img[-3:, n // 2 - 3:n // 2 + 3].mean()
    return "X-ray" if corners > 60 else "ultrasound" if bottom < 30 else "CT" if bottom > 190 else "MRI"


def read_scan(pixels):
    """(modality, lesions) read from a scan's pixels; each lesion a dict of shape, brightness, size,
    side and the x of its centroid. Measured cuts: bounding-box fill >= 0.95 for squares, <= 0.84 for
    circles (cut 0.9); pixels in the top half over the bottom half <= 0.63 for triangles (apex up),
    >= 0.87 for circles (cut 0.75); the longer box side <= 39 px small, >= 46 px large (cut 43)."""
    img = np.asarray(pixels).astype(float)
    n, lesions = len(img), []
    for brightness, mask in (("bright", img > BRIGHT_ABOVE), ("dark", (img > DARK_BAND[0]) & (img < DARK_BAND[1]))):
        for blob in blobs(opened(mask)):
            if len(blob) < 100:  # a lone 5 x 5 leftover; the smallest lesion keeps over 400 px
                continue
            ys, xs = blob[:, 0], blob[:, 1]
            h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            mid = (ys.min() + ys.max()) / 2
            shape = ("square" if len(blob) / (h * w) > 0.9 else
                     "triangle" if (ys < mid).sum() / (ys > mid).sum() < 0.75 else "circle")
            lesions.append({"shape": shape, "brightness": brightness, "size": "large" if max(h, w) > 43 else "small",
                            "side": "left" if xs.mean() < (n - 1) / 2 else "right", "x": float(xs.mean())})
    return read_modality(img), lesions


@functools.lru_cache(maxsize=None)
def read_png(path):
    return read_scan(Image.open(path))


def described(lesions):
    """A scene's lesions as a sorted list of (shape, brightness, size, side), for order-free comparison."""
    return sorted((l["shape"], l["brightness"], l["size"], l["side"]) for l in lesions)


# ------------------------------------------------------ answering a question from a scene
VALUES = {"modality": ["CT", "MRI", "X-ray", "ultrasound"], "count": ["0", "1", "2", "3"],
          "shape": ["circle", "square", "triangle"], "brightness": ["bright", "dark"], "size": ["small", "large"],
          "side": ["left", "right"]}
SKILL_CUES = [("modality", {"modality"}), ("count", {"many"}), ("presence", {"there"}), ("side", {"side"}),
              ("brightness", {"bright", "dark"}), ("size", {"small", "large"}),
              ("shape", {"shape", "circle", "square", "triangle"})]


def expected_answer(question, options, modality, lesions):
    """(skill, form, answer) of a question about the scene (modality, lesions), read from the question's
    words: the skill from its cue words, yes/no when it names exactly one value of that skill."""
    words = set(re.findall(r"[a-z]+", question.lower()))
    skill = next(skill for skill, cues in SKILL_CUES if cues & words)
    if skill in ("modality", "presence", "count"):
        truth = {"modality": modality, "presence": "yes" if lesions else "no", "count": str(len(lesions))}[skill]
    else:
        assert len(lesions) == 1, f"a question about the lesion's {skill} on a scan with {len(lesions)} lesions"
        truth = lesions[0][skill]
    if options:
        letters = [letter for letter, text in options.items() if text == truth]
        assert len(letters) == 1 and sorted(options.values()) == sorted(VALUES[skill]), options
        return skill, "choice", letters[0]
    if skill == "presence":
        return skill, "closed", truth
    named = [v for v in VALUES[skill] if v in words]  # the open questions name none or every value
    return (skill, "closed", "yes" if named == [truth] else "no") if len(named) == 1 else (skill, "open", truth)


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
    first = [pixel_hash(tmp_path / name / "images" / "test_000000.png") for name in ("a", "b")]
    assert first[0] == first[1]


def test_cli_writes_the_set(tmp_path):
    res = CliRunner().invoke(S.main, ["-o", str(tmp_path), "--n-train", "12", "--n-test", "6", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "train: 12 questions on 4 images" in res.output
    assert len(read_jsonl(tmp_path / "test.jsonl")) == 6


# ----------------------------------------------------------------------- scenes written out by hand
def lesion(shape, brightness, size, side, cx, cy, r):
    return {"shape": shape, "brightness": brightness, "size": size, "side": side, "cx": cx, "cy": cy, "r": r}


# Scenes written out by hand: (modality, lesions, the caption, {skill: the open-form answer}).
HAND_SCENES = [
    ("CT", [], "A CT scan with no visible lesion.", {"modality": "CT", "presence": "no", "count": "0"}),
    ("ultrasound", [lesion("triangle", "bright", "large", "right", 80.0, 70.0, 28.0)],
     "An ultrasound image showing one lesion: a large bright triangle on the right side.",
     {"modality": "ultrasound", "presence": "yes", "count": "1", "shape": "triangle", "brightness": "bright",
      "size": "large", "side": "right"}),
    ("MRI", [lesion("circle", "dark", "small", "left", 35.0, 50.0, 17.0)],
     "An MRI scan showing one lesion: a small dark circle on the left side.",
     {"modality": "MRI", "presence": "yes", "count": "1", "shape": "circle", "brightness": "dark", "size": "small",
      "side": "left"}),
    ("MRI", [lesion("circle", "dark", "small", "left", 35.0, 30.0, 16.0),
             lesion("square", "bright", "small", "right", 75.0, 70.0, 16.0)],
     "An MRI scan showing two lesions: a small dark circle on the left side; a small bright square on the right side.",
     {"modality": "MRI", "presence": "yes", "count": "2"}),
    ("X-ray", [lesion("square", "dark", "small", "right", 80.0, 25.0, 16.0),
               lesion("triangle", "bright", "small", "left", 30.0, 55.0, 16.0),
               lesion("circle", "bright", "small", "right", 80.0, 85.0, 16.0)],
     "An X-ray image showing three lesions: a small dark square on the right side; a small bright triangle on the "
     "left side; a small bright circle on the right side.",
     {"modality": "X-ray", "presence": "yes", "count": "3"}),
]


@pytest.mark.parametrize("modality, lesions, caption, _", HAND_SCENES)
def test_caption_of_hand_written_scenes(modality, lesions, caption, _):
    assert S.caption(modality, lesions) == caption


@pytest.mark.parametrize("modality, lesions, _, answers", HAND_SCENES)
def test_open_answers_of_hand_written_scenes(modality, lesions, _, answers):
    """Every skill the scene supports, asked as an open question (presence: as its only form, yes/no)."""
    for skill, want in answers.items():
        form = "closed" if skill == "presence" else "open"
        question, answer, options = S.make_question(skill, form, modality, lesions, random.Random(0))
        assert (answer, options) == (want, None), (skill, question)


@pytest.mark.parametrize("modality, lesions, _, answers", HAND_SCENES)
def test_choice_answers_of_hand_written_scenes(modality, lesions, _, answers):
    """The letter points at the true value, among all of the skill's values lettered from A."""
    for skill, want in answers.items():
        if skill == "presence":
            continue
        for seed in range(6):
            _q, letter, options = S.make_question(skill, "choice", modality, lesions, random.Random(seed))
            assert list(options) == list("ABCD")[:len(VALUES[skill])]
            assert sorted(options.values()) == sorted(VALUES[skill]) and options[letter] == want


@pytest.mark.parametrize("modality, lesions, _, answers", HAND_SCENES[1:3])
def test_closed_answers_of_hand_written_scenes(modality, lesions, _, answers):
    """A yes/no question names one value of the lesion's attribute: 'yes' exactly when it is the true one,
    and over a few seeds both the true and a false value get asked."""
    for skill in S.LESION_SKILLS:
        seen = set()
        for seed in range(12):
            question, answer, _o = S.make_question(skill, "closed", modality, lesions, random.Random(seed))
            asked = [v for v in VALUES[skill] if v in re.findall(r"[a-z]+", question)]
            assert len(asked) == 1, question
            assert answer == ("yes" if asked[0] == answers[skill] else "no"), question
            seen.add(answer)
        assert seen == {"yes", "no"}, skill


# ------------------------------------------------------------- the generated set against its pixels
def test_stored_scene_is_what_the_pixels_show(synth):
    """Each test image's metadata (modality; each lesion's shape, brightness, size, side) is what `read_scan`
    finds in the PNG; each lesion's centroid lies within 1.5 px of the stored centre (measured: 1.0 px at
    most over 5,000 scans) and at least 9 px from the midline (side_margin: 10 px)."""
    scenes = {r["images"][0]: r["meta"] for r in load_source("synthetic", synth, "test")}
    assert Counter(len(m["lesions"]) for m in scenes.values()).keys() == {0, 1, 2, 3}
    for path, meta in scenes.items():
        modality, lesions = read_png(path)
        assert (modality, described(lesions)) == (meta["modality"], described(meta["lesions"])), path
        xs, stored = sorted(l["x"] for l in lesions), sorted(l["cx"] for l in meta["lesions"])
        assert all(abs(x - cx) <= 1.5 and abs(x - 55.5) >= 9 for x, cx in zip(xs, stored)), (path, xs, stored)


def test_every_test_answer_is_what_the_pixels_show(synth):
    """Skill, form and answer of each benchmark record, worked out from its question and its image's pixels."""
    recs = load_source("synthetic", synth, "test")
    assert len(recs) == 150
    for r in recs:
        want = expected_answer(r["question"], r["options"], *read_png(r["images"][0]))
        assert want == (r["meta"]["skill"], r["meta"]["form"], r["answer"]), r


def test_lesion_attributes_are_asked_only_with_one_lesion(synth):
    asked = [r for r in load_source("synthetic", synth, "test") if r["meta"]["skill"] in S.LESION_SKILLS]
    assert asked
    assert all(len(read_png(r["images"][0])[1]) == 1 for r in asked)


def test_train_answers_are_what_the_pixels_show(synth):
    """The training file (ShareGPT, each question inside an instruction template) answers what its images
    show, yes/no capitalised: the first 150 records, the options being the user turn's 'X. value' lines."""
    for s in read_jsonl(os.path.join(synth, "train.jsonl"))[:150]:
        user, answer = s["messages"][0]["content"], s["messages"][1]["content"]
        lines = user.removeprefix("<image>").split("\n")
        options = dict(m.groups() for m in (re.fullmatch(r"([A-D])\. (.+)", line) for line in lines) if m)
        question = " ".join(line for line in lines if not re.fullmatch(r"[A-D]\. .+", line))
        _skill, form, want = expected_answer(question, options, *read_png(os.path.join(synth, s["images"][0])))
        assert answer == (want.capitalize() if form == "closed" else want), s


def test_train_file_is_canonical_sharegpt(synth):
    lines = read_jsonl(os.path.join(synth, "train.jsonl"))
    assert len(lines) == 600
    for s in lines:
        assert [m["role"] for m in s["messages"]] == ["user", "assistant"]
        assert s["messages"][0]["content"].startswith("<image>")
        assert s["messages"][0]["content"].count("<image>") == len(s["images"]) == 1
        assert os.path.exists(os.path.join(synth, s["images"][0]))


CAPTION = re.compile(r"(A CT scan|An MRI scan|An X-ray image|An ultrasound image) "
                     r"(?:with no visible lesion|showing (?:one lesion|(two|three) lesions): (.+))\.")
CAPTION_LESION = re.compile(r"a (small|large) (bright|dark) (circle|square|triangle) on the (left|right) side")
CAPTION_MODALITY = {"A CT scan": "CT", "An MRI scan": "MRI", "An X-ray image": "X-ray",
                    "An ultrasound image": "ultrasound"}


def test_one_caption_per_image_stating_what_the_pixels_show(synth):
    """captions.jsonl has one caption per written image, with its split; each test image's caption, parsed
    word by word, names the modality and the lesions `read_scan` finds in the pixels."""
    caps = read_jsonl(os.path.join(synth, "captions.jsonl"))
    assert sorted(c["image"] for c in caps) == sorted(f"images/{n}" for n in os.listdir(os.path.join(synth, "images")))
    assert all(os.path.basename(c["image"]).startswith(c["split"] + "_") for c in caps)
    test = [c for c in caps if c["split"] == "test"]
    assert len(test) > 40
    for c in test:
        m = CAPTION.fullmatch(c["caption"])
        assert m, c["caption"]
        parts = m[3].split("; ") if m[3] else []
        assert len(parts) == {None: 0, "two": 2, "three": 3}[m[2]] + ("showing one lesion:" in c["caption"])
        matches = [CAPTION_LESION.fullmatch(p) for p in parts]
        assert all(matches), c["caption"]
        said = sorted((lm[3], lm[2], lm[1], lm[4]) for lm in matches)
        modality, lesions = read_png(os.path.join(synth, c["image"]))
        assert (CAPTION_MODALITY[m[1]], said) == (modality, described(lesions)), c


# ------------------------------------------------------- captions -> labels, vision pretraining
def test_caption_attributes_reads_each_value_from_the_words():
    said = S.caption_attributes("An MRI scan showing one lesion: a large dark square on the left side.")
    assert said == {"shape": "square", "brightness": "dark", "size": "large", "side": "left"}
    # a word inside another word does not count; two values of one attribute name neither
    said = S.caption_attributes("A CT scan: a small or large circles, brightly lit, leftover.")
    assert said == {"shape": None, "brightness": None, "size": None, "side": None}


NOT_STATED = -100


@pytest.mark.parametrize("text, labels", [
    ("An MRI scan showing one lesion: a large dark square on the left side.",
     {"modality": 1, "count": 1, "shape": 1, "brightness": 1, "size": 1, "side": 0}),
    ("An ultrasound image showing one lesion: a small bright triangle on the right side.",
     {"modality": 3, "count": 1, "shape": 2, "brightness": 0, "size": 0, "side": 1}),
    ("An X-ray image with no visible lesion.",
     {"modality": 2, "count": 0, "shape": NOT_STATED, "brightness": NOT_STATED, "size": NOT_STATED,
      "side": NOT_STATED}),
    ("A CT scan showing two lesions: a small dark circle on the left side; a small bright square on the right side.",
     {"modality": 0, "count": 2, "shape": NOT_STATED, "brightness": NOT_STATED, "size": NOT_STATED,
      "side": NOT_STATED}),
])
def test_caption_labels_of_hand_written_captions(text, labels):
    """Class indices in the order of CHOICES: CT MRI X-ray ultrasound; circle square triangle; bright dark;
    small large; left right. Lesion attributes are stated only for a single lesion."""
    assert S.caption_labels(text) == labels


def test_caption_labels_invert_the_caption_of_every_scene():
    """caption_labels reads back from `caption` the scene it was given, for 200 generated scenes."""
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
    ip = ImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56)
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
    # held out; measured 1.0 and 0.886, chance 0.25 and 0.5
    assert acc["modality"] >= 0.95 and acc["brightness"] >= 0.8, acc
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("visual.") for k in changed)
    assert any(k.startswith("visual.blocks.") for k in changed) and any(k.startswith("visual.merger.") for k in changed)


# ---------------------------------------------------------------------------------------- tokenizer
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
