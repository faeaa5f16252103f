"""Tests for data.py: tokenizer loading, chat template, loss mask, ShareGPT records, batching.
transformers is the oracle (apply_chat_template, its tokenizers).

    python -m pytest -q tests/test_data.py
"""
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import data
from demo import synthetic
from image_processor import ImageProcessor
from test_image_processor import picture

CORPUS = [
    "What is shown in this chest X-ray? The image shows a normal heart and clear lungs.",
    "Is there a fracture of the left femur? No, there is no fracture.",
    "The assistant and the user talk about a CT scan of the abdomen with contrast.",
    "Which organ is abnormal? A) liver B) spleen C) kidney D) pancreas. Answer: B",
    "MRI brain, axial T2: hyperintense lesion in the right temporal lobe, 12 mm.",
] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return synthetic.build_tokenizer(CORPUS, str(tmp_path_factory.mktemp("tok")), vocab_size=600)


# ----------------------------------------------------------------------------- tokenizer

def test_load_tokenizer_rejects_a_tokenizer_without_qwen_special_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=t).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="special tokens"):
        data.load_tokenizer(str(tmp_path))


# ----------------------------------------------------------------------------- chat template

def _as_parts(messages):
    """Our `<image>` strings -> the template's content parts (image part + text parts)."""
    out = []
    for m in messages:
        pieces = re.split(r"<image>\n?", m["content"])
        parts = [{"type": "text", "text": pieces[0]}] if pieces[0] else []
        for p in pieces[1:]:
            parts.append({"type": "image"})
            if p:
                parts.append({"type": "text", "text": p})
        out.append({"role": m["role"], "content": parts})
    return out


CONVERSATIONS = [
    ([{"role": "user", "content": "Is the liver enlarged?"},
      {"role": "assistant", "content": "No."}], 0),
    ([{"role": "system", "content": "You are a radiologist."},
      {"role": "user", "content": "<image>\nWhat modality is this?"},
      {"role": "assistant", "content": "CT"}], 1),
    ([{"role": "user", "content": "Compare <image> and <image>. Which shows the lesion?"},
      {"role": "assistant", "content": "The second one, the assistant thinks."},
      {"role": "user", "content": "<image>Is this the same patient?"},
      {"role": "assistant", "content": "assistant: yes\n\nassistant"}], 3),
]


@pytest.mark.parametrize("messages,n_images", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_render_chat_equals_apply_chat_template(tok, messages, n_images, generation_prompt):
    msgs = messages[:-1] if generation_prompt else messages
    ref = tok.apply_chat_template(_as_parts(msgs), tokenize=False,
                                  add_generation_prompt=generation_prompt)
    assert data.render_chat(msgs, add_generation_prompt=generation_prompt) == ref


def test_image_placeholder_with_its_newline_renders_like_an_image_content_part(tok):
    ref = tok.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Which organ?"}]}], tokenize=False)
    for text in ("<image>\nWhich organ?", "<image>Which organ?"):
        assert data.render_chat([{"role": "user", "content": text}]) == ref
    two = data.render_chat([{"role": "user", "content": "<image>\n\nWhich"}])
    assert "<|vision_end|>\nWhich" in two  # only the one newline that belongs to the tag goes


def test_render_chat_accepts_template_content_parts(tok):
    parts = _as_parts(CONVERSATIONS[2][0])
    assert data.render_chat(parts) == tok.apply_chat_template(parts, tokenize=False)


def _record(messages, n_images, seed=0):
    sizes = [(200, 300), (420, 380), (90, 700)]
    return {"messages": messages, "images": [Image.fromarray(picture(*sizes[k % 3], seed + k))
                                             for k in range(n_images)]}


@pytest.mark.parametrize("messages,n_images", CONVERSATIONS)
def test_encode_ids_equal_transformers_tokenization_with_expanded_image_pads(tok, messages, n_images):
    rec = _record(messages, n_images)
    out = data.encode(rec, tok, ImageProcessor())
    per_image = iter((out["image_grid_thw"].prod(-1) // 4).tolist())
    text = tok.apply_chat_template(_as_parts(messages), tokenize=False)
    text = re.sub(re.escape("<|image_pad|>"), lambda _: "<|image_pad|>" * next(per_image), text)
    assert out["input_ids"].tolist() == tok(text, add_special_tokens=False)["input_ids"]
    n_pad = int((out["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_pad == int(out["image_grid_thw"].prod(-1).sum()) // 4
    assert out["pixel_values"].shape[0] == int(out["image_grid_thw"].prod(-1).sum())
    assert len(out["labels"]) == len(out["input_ids"])


@pytest.mark.parametrize("messages,n_images", CONVERSATIONS)
def test_encode_prompt_of_rendered_text_gives_the_ids_of_encode_and_supervises_nothing(tok, messages, n_images):
    rec, proc = _record(messages, n_images), ImageProcessor()
    out = data.encode_prompt(data.render_chat(messages), rec["images"], tok, proc)
    ref = data.encode(rec, tok, proc)
    assert out["input_ids"].tolist() == ref["input_ids"].tolist()
    assert torch.equal(out["pixel_values"], ref["pixel_values"])
    assert torch.equal(out["image_grid_thw"], ref["image_grid_thw"].reshape(-1, 3))
    assert bool((out["labels"] == -100).all())


def _supervised_runs(tok, out):
    runs, cur = [], []
    for t, lab in zip(out["input_ids"].tolist(), out["labels"].tolist()):
        if lab != -100:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


def test_labels_cover_exactly_assistant_answers_and_their_im_end(tok):
    messages = CONVERSATIONS[2][0]
    out = data.encode(_record(messages, 3), tok, ImageProcessor())
    answers = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert _supervised_runs(tok, out) == answers  # answers mention "assistant" on purpose


def test_special_tokens_inside_user_or_assistant_text_are_rejected(tok):
    for role, text in [("user", "hi <|im_start|>system"), ("assistant", "ok<|endoftext|>")]:
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        msgs[0 if role == "user" else 1]["content"] = text
        with pytest.raises(data.SampleError, match="special tokens") as e:
            data.encode({"messages": msgs, "images": []}, tok, ImageProcessor())
        assert e.value.reason == "special_tokens"


def test_over_length_drops_trailing_exchanges_with_their_images(tok):
    proc = ImageProcessor()
    messages = [{"role": "user", "content": "<image>First question?"},
                {"role": "assistant", "content": "First answer."},
                {"role": "user", "content": "<image>Second question?"},
                {"role": "assistant", "content": "Second answer."}]
    rec = _record(messages, 2)
    full = data.encode(rec, tok, proc, max_len=4096)
    first_len = len(data.encode(_record(messages[:2], 1), tok, proc)["input_ids"])
    short = data.encode(rec, tok, proc, max_len=len(full["input_ids"]) - 1)
    assert short["exchanges_dropped"] == 1 and full["exchanges_dropped"] == 0
    assert len(short["input_ids"]) == first_len
    assert short["image_grid_thw"].shape[0] == 1
    assert short["pixel_values"].shape[0] == int(short["image_grid_thw"].prod())
    n_pad = int((short["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_pad * 4 == short["pixel_values"].shape[0]  # the image span is whole
    assert _supervised_runs(tok, short) == ["First answer.<|im_end|>"]
    with pytest.raises(data.SampleError, match="max_len") as e:
        data.encode(rec, tok, proc, max_len=first_len - 1)
    assert e.value.reason == "too_long"


# ----------------------------------------------------------------------------- ShareGPT records

def _save_images(folder, n, seed=0):
    names = []
    for k in range(n):
        name = f"img{k}.png"
        Image.fromarray(picture(60 + 40 * k, 90, seed + k)).save(os.path.join(folder, name))
        names.append(name)
    return names


def test_read_sharegpt_both_dialects_json_and_jsonl_give_the_same_records(tmp_path):
    names = _save_images(str(tmp_path), 2)
    messages_dialect = {"messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "<image><image>Same organ?"},
                                     {"role": "assistant", "content": "Yes."}], "images": names}
    conversations_dialect = {"conversations": [{"from": "system", "value": "Be brief."},
                                               {"from": "human", "value": "<image><image>Same organ?"},
                                               {"from": "gpt", "value": "Yes."}], "images": names}
    (tmp_path / "a.json").write_text(json.dumps([messages_dialect, conversations_dialect]))
    (tmp_path / "b.jsonl").write_text(json.dumps(conversations_dialect) + "\n\n"
                                      + json.dumps(messages_dialect) + "\n")
    a, rep_a = data.read_sharegpt(str(tmp_path / "a.json"))
    b, rep_b = data.read_sharegpt(str(tmp_path / "b.jsonl"))
    assert a[0] == a[1] == b[0] == b[1]
    assert a[0]["images"] == [os.path.join(str(tmp_path), n) for n in names]  # resolved
    assert rep_a.kept == rep_b.kept == 2 and not rep_a.counts and not rep_b.counts


def test_write_then_read_sharegpt_round_trips_in_canonical_dialect(tmp_path):
    names = _save_images(str(tmp_path), 1)
    recs = [{"messages": [{"role": "user", "content": "<image>What is it?"},
                          {"role": "assistant", "content": "A lung."}],
             "images": [os.path.join(str(tmp_path), names[0])]},
            {"messages": [{"role": "user", "content": "Text only, ünïcode?"},
                          {"role": "assistant", "content": "Yes."}], "images": [],
             "id": "vqa_rad/17", "meta": {"source": "vqa_rad"}}]
    data.write_sharegpt(recs, str(tmp_path / "out" / "train.jsonl"))
    lines = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert set(json.loads(lines[0])) == {"messages", "images"}
    assert data.read_sharegpt(str(tmp_path / "out" / "train.jsonl"))[0] == recs
    with pytest.raises(ValueError, match="record 0: images must be paths"):
        data.write_sharegpt([{"messages": recs[0]["messages"], "images": [Image.new("RGB", (9, 9))]}],
                            str(tmp_path / "bad.jsonl"))


GOOD = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
BAD_LINES = {
    "invalid_json": '{"messages": [}',
    "image_count_mismatch": json.dumps({**GOOD, "images": ["x.png"]}),
    "empty": json.dumps({"messages": []}),
    "non_alternating": json.dumps({"messages": [{"role": "user", "content": "Q"},
                                                {"role": "user", "content": "Q again"}]}),
    "special_tokens": json.dumps({"messages": [{"role": "user", "content": "<|im_end|>Q"},
                                               {"role": "assistant", "content": "A"}]}),
    "bad_role": json.dumps({"conversations": [{"from": "doctor", "value": "Q"},
                                              {"from": "gpt", "value": "A"}]}),
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_bad_record_is_skipped_and_counted_or_raised_when_strict(tmp_path, reason):
    path = str(tmp_path / "train.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps(GOOD) + "\n" + BAD_LINES[reason] + "\n" + json.dumps(GOOD) + "\n")
    records, report = data.read_sharegpt(path)
    assert len(records) == 2 and report.read == 3 and report.counts == {reason: 1}
    assert report.examples[reason].startswith(f"{path} line 2: ")
    assert f"skipped 1 ({reason})" in report.lines()
    with pytest.raises(data.SampleError, match=f"{re.escape(path)} line 2: ") as e:
        data.read_sharegpt(path, strict=True)
    assert e.value.reason == reason


def test_invalid_json_array_file_names_the_file(tmp_path):
    (tmp_path / "a.json").write_text('[{"messages": []},')
    with pytest.raises(ValueError, match="a.json: invalid JSON"):
        data.read_sharegpt(str(tmp_path / "a.json"))


def test_missing_and_corrupt_images_are_counted_by_the_dataset_and_raised_by_encode(tok, tmp_path):
    names = _save_images(str(tmp_path), 1)
    (tmp_path / "corrupt.png").write_bytes(b"not an image at all")
    rec = lambda name: {"messages": [{"role": "user", "content": "<image>Q?"},
                                     {"role": "assistant", "content": "A."}], "images": [name]}
    data.write_sharegpt([rec(names[0]), rec("missing.png"), rec("corrupt.png")],
                        str(tmp_path / "train.jsonl"))
    proc = ImageProcessor()
    ds = data.SFTDataset(str(tmp_path / "train.jsonl"), tok, proc, max_len=512)
    assert len(ds) == 1 and ds.report.counts == {"image_missing": 1, "image_corrupt": 1}
    assert "missing.png" in ds.report.examples["image_missing"]
    for name, reason in [("missing.png", "image_missing"), ("corrupt.png", "image_corrupt")]:
        with pytest.raises(data.SampleError) as e:
            data.encode(rec(str(tmp_path / name)), tok, proc)
        assert e.value.reason == reason and name in str(e.value)
    with pytest.raises(data.SampleError, match="train.jsonl line 2: image .*missing.png"):
        data.SFTDataset(str(tmp_path / "train.jsonl"), tok, proc, max_len=512, strict=True)


def test_image_failing_only_at_decode_time_is_skipped_by_collate_and_counted(tok, tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(picture(300, 300)).save(good)
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:2000])  # header fine, pixels not
    recs = [{"messages": [{"role": "user", "content": "<image>Q?"},
                          {"role": "assistant", "content": "A."}], "images": [str(tmp_path / n)]}
            for n in ("good.jpg", "truncated.jpg")]
    ds = data.SFTDataset(recs, tok, ImageProcessor(), max_len=1024)
    assert len(ds) == 2  # the header scan cannot see it
    with pytest.warns(UserWarning, match="image_corrupt"):
        batch = data.collate([ds[0], ds[1]], pad_id=tok.pad_token_id)
    assert batch["n_skipped"] == 1 and batch["input_ids"].shape[0] == 1


# ----------------------------------------------------------------------------- batching

def _text_records(n, seed=0):
    rng = np.random.default_rng(seed)
    words = "liver lung heart kidney lesion normal mass contrast axial the".split()
    recs = []
    for i in range(n):
        q = " ".join(rng.choice(words, rng.integers(1, 40)))
        a = " ".join(rng.choice(words, rng.integers(1, 30)))
        recs.append({"messages": [{"role": "user", "content": f"{i}: {q}?"},
                                  {"role": "assistant", "content": a}], "images": []})
    return recs


def test_dataset_lengths_equal_encoded_lengths_including_shortened_and_image_samples(tok):
    recs = _text_records(5)
    long = [{"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "ok"}]
    recs.append(_record(long + [{"role": "user", "content": "more " * 200},
                                {"role": "assistant", "content": "fine"}], 1))
    ds = data.SFTDataset(recs, tok, ImageProcessor(), max_len=300)
    assert ds.lengths == [len(ds[i]["input_ids"]) for i in range(len(ds))]
    assert ds.exchanges_dropped == 1 and ds.samples_shortened == 1


def test_collate_pads_right_for_training_and_left_for_generation(tok):
    ds = data.SFTDataset(_text_records(3) + [_record(CONVERSATIONS[1][0], 1)], tok,
                         ImageProcessor(), max_len=1024)
    samples = [ds[i] for i in range(len(ds))]
    lens = [len(s["input_ids"]) for s in samples]
    for side in ("right", "left"):
        b = data.collate(samples, pad_id=tok.pad_token_id, padding_side=side)
        assert b["input_ids"].shape == (4, max(lens))
        for r, s in enumerate(samples):
            span = slice(0, lens[r]) if side == "right" else slice(max(lens) - lens[r], max(lens))
            assert torch.equal(b["input_ids"][r, span], s["input_ids"])
            assert torch.equal(b["labels"][r, span], s["labels"])
            assert int(b["attention_mask"][r].sum()) == lens[r] and set(b["attention_mask"][r, span].tolist()) == {1}
            assert (b["labels"][r][b["attention_mask"][r] == 0] == -100).all()
            assert (b["input_ids"][r][b["attention_mask"][r] == 0] == tok.pad_token_id).all()
        assert torch.equal(b["pixel_values"], samples[3]["pixel_values"])
        assert b["image_grid_thw"].shape == (1, 3)


def test_packing_fills_rows_up_to_max_len_with_numbered_samples(tok):
    ds = data.SFTDataset(_text_records(40), tok, ImageProcessor(), max_len=256)
    rows = data.pack(ds.lengths, 256)
    assert sorted(i for r in rows for i in r) == list(range(len(ds))) and len(rows) < len(ds)
    assert all(sum(ds.lengths[i] for i in r) <= 256 for r in rows)
    batch = data.collate([[ds[i] for i in rows[r]] for r in range(3)], pad_id=tok.pad_token_id)
    for r in range(3):
        mask, k = batch["attention_mask"][r], len(rows[r])
        assert mask.max() == k
        assert [int((mask == j + 1).sum()) for j in range(k)] == [ds.lengths[i] for i in rows[r]]
        expect = torch.cat([ds[i]["input_ids"] for i in rows[r]])
        assert torch.equal(batch["input_ids"][r, :len(expect)], expect)


def test_pack_is_best_fit_and_deterministic():
    lengths = [90, 60, 50, 40, 30, 20, 10]
    assert data.pack(lengths, 100) == [[0, 6], [1, 3], [2, 4, 5]]
    with pytest.raises(ValueError, match="max_len"):
        data.pack([101], 100)


def padding_fraction(plan, lengths):
    """Share of padding when each batch of `plan` (index lists into `lengths`) pads to its longest."""
    real = sum(lengths[i] for b in plan for i in b)
    total = sum(len(b) * max(lengths[i] for i in b) for b in plan if b)
    return 1 - real / total if total else 0.0


@pytest.mark.parametrize("n,batch_size,world", [(103, 4, 1), (103, 4, 3), (10, 1, 4), (7, 8, 2), (1, 2, 4)])
def test_sampler_gives_every_sample_once_per_epoch_with_equal_steps_per_rank(n, batch_size, world):
    lengths = list(np.random.default_rng(0).integers(5, 500, n))
    samplers = [data.LengthGroupedSampler(lengths, batch_size, seed=1, rank=r, world_size=world)
                for r in range(world)]
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        plans = [s.plan() for s in samplers]
        assert len({len(p) for p in plans}) == 1 and len(plans[0]) == len(samplers[0])
        seen = [i for p in plans for b in p for i in b]
        assert sorted(set(seen)) == list(range(n)) and len(seen) == n + samplers[0].repeated
        assert all(1 <= len(b) <= batch_size for p in plans for b in p)
    assert samplers[0].repeated == {(10, 1, 4): 2, (1, 2, 4): 3}.get((n, batch_size, world), 0)


def test_sampler_is_deterministic_per_seed_and_epoch_and_groups_lengths():
    lengths = list(np.random.default_rng(0).integers(5, 1000, 2000))
    s = data.LengthGroupedSampler(lengths, 16, seed=3)
    first = s.plan()
    assert data.LengthGroupedSampler(lengths, 16, seed=3).plan() == first
    s.set_epoch(1)
    assert s.plan() != first
    ungrouped = [list(range(i, i + 16)) for i in range(0, 2000, 16)]
    assert padding_fraction(first, lengths) < 0.1 < padding_fraction(ungrouped, lengths)


def test_dataloader_with_workers_gives_the_same_batches(tok):
    import functools
    ds = data.SFTDataset(_text_records(24), tok, ImageProcessor(), max_len=512)
    sampler = data.LengthGroupedSampler(ds.lengths, 4, seed=0, rank=1, world_size=2)
    collate = functools.partial(data.collate, pad_id=tok.pad_token_id)
    inline = [collate([ds[i] for i in b]) for b in sampler.plan()]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert len(batches) == len(inline) == 3
    for a, b in zip(batches, inline):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


# ----------------------------------------------------------------------------- bad input, counted
def _float_tiff_with_inf(path):
    a = np.full((64, 64), 100.0, dtype=np.float32)
    a[3, 3] = np.inf
    Image.fromarray(a, mode="F").save(path)


def test_an_image_that_cannot_be_converted_is_a_counted_skip_naming_its_file(tok, tmp_path):
    poisoned = tmp_path / "poison.tiff"
    _float_tiff_with_inf(poisoned)
    with pytest.raises(data.SampleError, match=r"poison.tiff.*non-finite") as e:
        data.load_images([str(poisoned)], ImageProcessor())
    assert e.value.reason == "image_corrupt"
    rec = {"messages": [{"role": "user", "content": "<image>Q?"}, {"role": "assistant", "content": "A."}],
           "images": [str(poisoned)]}
    ds = data.SFTDataset([rec], tok, ImageProcessor(), max_len=1024)
    with pytest.warns(UserWarning, match="poison.tiff"):
        sample = ds[0]  # the header scan cannot see it; decoding can, and says which file
    assert data.is_skipped(sample) and sample["skip"] == "image_corrupt"
    assert data.collate([sample], pad_id=0) is None


def test_bad_lines_of_every_kind_are_counted_with_their_line(tmp_path):
    ok = json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]})
    lines = [ok.encode(), b'{"messages": [{"role": "user", "content": "Q\xff?"}]}',
             json.dumps({"messages": json.loads(ok)["messages"], "images": 5}).encode(),
             b"[" * 100000 + b"]" * 100000, ok.encode()]
    (tmp_path / "t.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    records, report = data.read_sharegpt(str(tmp_path / "t.jsonl"))
    assert len(records) == 2 and report.read == 5
    assert report.counts == {"invalid_encoding": 1, "bad_content": 1, "invalid_json": 1}
    assert "t.jsonl line 2: not UTF-8" in report.examples["invalid_encoding"]
    assert "`images` is a int" in report.examples["bad_content"]


def test_a_file_with_no_usable_record_says_why(tok, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no usable training record:\n.*empty.jsonl: read 0, kept 0"):
        data.SFTDataset(str(tmp_path / "empty.jsonl"), tok, ImageProcessor())
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\nnot json\n')
    with pytest.raises(ValueError, match=r"(?s)read 2, kept 0.*skipped 1 \(empty\).*skipped 1 \(invalid_json\)"):
        data.SFTDataset(str(tmp_path / "bad.jsonl"), tok, ImageProcessor())


def test_the_read_report_shows_exchanges_cut_from_over_length_conversations(tok):
    exchange = [{"role": "user", "content": "Describe it."}, {"role": "assistant", "content": "ok"}]
    long = exchange + [{"role": "user", "content": "more " * 200}, {"role": "assistant", "content": "fine"}] * 3
    ds = data.SFTDataset(_text_records(1) + [_record(long, 0)], tok, ImageProcessor(), max_len=300)
    assert ds.summary().splitlines()[-1] == (
        "  shortened 1 over-length conversations: 3 later exchanges dropped (kept whole up to max_len)")


def _png_with_late_exif(path, orientation):
    """A PNG whose eXIf chunk comes after the pixel data (allowed by the PNG spec), so only a walk
    over the chunks, or a full decode, finds it."""
    import struct
    import zlib
    Image.fromarray(picture(56, 112)).save(path)
    raw = open(path, "rb").read()
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else exif.tobytes()
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    open(path, "wb").write(raw[:-12] + chunk + raw[-12:])  # before IEND


def test_the_length_scan_reads_headers_only_and_counts_rotated_images_right(tmp_path, monkeypatch):
    """A PNG's EXIF may sit after its pixel data; the scan needs only the size (a 90-degree turn
    swaps height and width, the token count stays), so it never decodes, and it agrees with
    what decoding (EXIF applied) gives."""
    from PIL import PngImagePlugin
    _png_with_late_exif(tmp_path / "late.png", 6)  # 112 wide, 56 high; upright: 56 wide, 112 high
    Image.fromarray(picture(70, 150)).save(tmp_path / "plain.png")  # no EXIF at all
    proc = ImageProcessor(min_pixels=56 * 56, max_pixels=56 * 112)
    decoded = [int(proc([str(tmp_path / n)])[1].prod()) // 4 for n in ("late.png", "plain.png")]
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda self: (_ for _ in ()).throw(
        AssertionError("the scan decoded the pixels")))
    assert data.image_token_counts([str(tmp_path / "late.png"), str(tmp_path / "plain.png")], proc) == decoded
