"""Tests for infimed.py: parity with transformers' Qwen2.5-VL / Qwen2-VL on tiny random configs,
checkpoint round trips, packing, M-RoPE positions and generation.

    python -m pytest -q tests/test_model.py
"""
import json
import os
import shutil

import pytest
import torch
from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration)

from infimed import (QwenVL, QwenVLConfig, Segments, attention_mask_4d, mrope_cos_sin, rope_index, sample,
                     vision_layout)

# Tiny vocabulary: special ids live inside it (the real ones are 151652..151656).
VOCAB, V_START, V_END, IMG, VID, EOS = 300, 288, 289, 290, 291, 292
TEXT_IDS = (1, 280)  # ordinary text tokens are drawn from here
TOKENS = dict(image_token_id=IMG, video_token_id=VID, vision_start_token_id=V_START, vision_end_token_id=V_END)
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=0,
            rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=1e6),
            initializer_range=0.2)  # 10x the real 0.02: greedy text varies instead of repeating one token
# window_size 56 px = 2 merged units per window side, so each image below has several windows,
# some cut at the border; blocks 1 and 3 attend over the whole image.
VISION_25 = dict(depth=4, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                 fullatt_block_indexes=[1, 3], window_size=56, initializer_range=0.2)
VISION_2 = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, initializer_range=0.2)
# (t, h, w) patch grids: 6x4 merged units (6 windows) and 3x5 (6 windows, padded borders), 2x2.
GRIDS = [(1, 12, 8), (1, 6, 10), (1, 4, 4)]


def hf_model(kind, tie=True, seed=0):
    torch.manual_seed(seed)
    if kind == "qwen2_5_vl":
        cfg = Qwen2_5_VLConfig(text_config=dict(TEXT, tie_word_embeddings=tie), vision_config=VISION_25,
                               tie_word_embeddings=tie, **TOKENS)
        return Qwen2_5_VLForConditionalGeneration(cfg).eval()
    cfg = Qwen2VLConfig(text_config=dict(TEXT, tie_word_embeddings=tie), vision_config=VISION_2,
                        tie_word_embeddings=tie, **TOKENS)
    return Qwen2VLForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded from its save_pretrained directory, directory)."""
    hf = hf_model(request.param, tie=request.param == "qwen2_5_vl")
    path = str(tmp_path_factory.mktemp(request.param))
    hf.save_pretrained(path)
    return hf, QwenVL.from_pretrained(path), path


def image_span(grid):
    t, h, w = grid
    return [V_START] + [IMG] * (t * h * w // 4) + [V_END]


def make_batch(padding="left", seed=1):
    """Three rows: two images of different sizes mid-text; a second sample with one image;
    a text-only sample; padded to one length."""
    g = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(*TEXT_IDS, (n,), generator=g).tolist()
    rows = [text(5) + image_span(GRIDS[0]) + text(4) + image_span(GRIDS[1]) + text(3),
            text(3) + image_span(GRIDS[2]) + text(6),
            text(11)]
    L = max(map(len, rows))
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(L - len(r), L) if padding == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = torch.tensor(r), 1
    grid = torch.tensor(GRIDS)
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 14 * 14, generator=g)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)


def hf_logits(hf, batch):
    with torch.no_grad():
        return hf(**batch, mm_token_type_ids=(batch["input_ids"] == IMG).int()).logits


# --------------------------------------------------------------------------- config
def test_config_reads_flat_hub_and_nested_layouts_alike(pair):
    hf, _, path = pair
    nested = QwenVLConfig.from_pretrained(path)
    flat = QwenVLConfig.from_dict(nested.to_dict())
    assert flat == nested
    assert nested.mrope_section == [2, 3, 3] and nested.image_token_id == IMG
    assert nested.vision.out_hidden_size == 64 and nested.vision.hidden_size == 32


def test_config_reads_real_qwen2_5_vl_3b_flat_config():
    d = {"model_type": "qwen2_5_vl", "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
         "num_attention_heads": 16, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
         "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "tie_word_embeddings": True,
         "vocab_size": 151936, "image_token_id": 151655,
         "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                           "in_chans": 3, "out_hidden_size": 2048, "window_size": 112,
                           "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu"}}
    c = QwenVLConfig.from_dict(d)
    assert (c.head_dim, c.mrope_section, c.tie_word_embeddings) == (128, [16, 24, 24], True)
    assert (c.vision.hidden_size, c.vision.out_hidden_size, c.vision.intermediate_size) == (1280, 2048, 3420)


def test_config_maps_qwen2_vl_embed_dim_to_vit_width():
    c = QwenVLConfig.from_dict({"model_type": "qwen2_vl", "hidden_size": 1536, "num_attention_heads": 12,
                                "vision_config": {"embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4}})
    assert (c.vision.hidden_size, c.vision.out_hidden_size, c.vision.intermediate_size) == (1280, 1536, 5120)
    assert c.vision.to_dict()["embed_dim"] == 1280 and c.vision.to_dict()["mlp_ratio"] == 4


# ------------------------------------------------------------------------- rope_index
def test_rope_index_image_between_text_by_hand():
    # 2 text tokens, one image of 4x6 patches (2x3 merged units), 2 text tokens
    ids = torch.tensor([[5, 6] + [IMG] * 6 + [7, 8]])
    pos, delta = rope_index(ids, torch.tensor([[1, 4, 6]]), None, IMG, 2)
    assert pos[0, 0].tolist() == [0, 1, 2, 2, 2, 2, 2, 2, 5, 6]  # temporal
    assert pos[1, 0].tolist() == [0, 1, 2, 2, 2, 3, 3, 3, 5, 6]  # rows
    assert pos[2, 0].tolist() == [0, 1, 2, 3, 4, 2, 3, 4, 5, 6]  # cols; text resumes at max + 1
    assert delta.tolist() == [7 - 10]


def test_rope_index_left_padding_and_packed_restart():
    ids = torch.tensor([[0, 0, 9, 9, 9], [9, 9, 9, 9, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 2, 2, 0]])
    pos, delta = rope_index(ids, None, mask, IMG, 2)
    assert pos[0].tolist() == [[0, 0, 0, 1, 2], [0, 1, 0, 1, 0]]
    assert delta.tolist() == [0, 0]


def test_rope_index_rejects_token_count_mismatch():
    with pytest.raises(ValueError, match="image"):
        rope_index(torch.tensor([[IMG] * 5]), torch.tensor([[1, 4, 6]]), None, IMG, 2)


def test_vision_windows_cover_every_unit_once():
    hw, order, wl, fl = vision_layout(torch.tensor(GRIDS), 2, 2)
    assert sorted(order.tolist()) == list(range(sum(t * h * w // 4 for t, h, w in GRIDS)))
    assert wl == [16] * 6 + [16, 16, 8, 8, 8, 4] + [16] and fl == [96, 60, 16]


def test_vision_layout_without_windows_keeps_raster_order():
    hw, order, wl, fl = vision_layout(torch.tensor(GRIDS), 2, None)
    assert order.tolist() == list(range(len(order))) and wl == fl == [96, 60, 16]
    assert hw[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]  # first 2x2 merge unit
    assert hw[4:8].tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]


@pytest.mark.parametrize("lens", [[6, 6, 6], [6, 2, 9], [7]])
def test_segments_attend_each_segment_alone(lens):
    """Equal lengths take the reshape path without a mask, unequal ones the padded, masked one."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lens), 2, 8, generator=g) for _ in range(3))
    got = Segments(lens, "cpu").attend(q, k, v)
    alone = lambda s: torch.nn.functional.scaled_dot_product_attention(*(t[s].transpose(0, 1) for t in (q, k, v)))
    bounds = torch.tensor([0] + lens).cumsum(0).tolist()
    ref = torch.cat([alone(slice(a, b)).transpose(0, 1) for a, b in zip(bounds[:-1], bounds[1:])])
    assert got.shape == q.shape and (got - ref).abs().max() <= 1e-6


def test_pixel_rows_must_match_grid(pair):
    _, ours, _ = pair
    batch = make_batch("left")
    batch["pixel_values"] = batch["pixel_values"][:-4]
    with pytest.raises(ValueError, match="patch rows"):
        ours(**batch)


# ----------------------------------------------------------------------- parity
@pytest.mark.parametrize("padding", ["left", "right"])
def test_logits_match_transformers(pair, padding):
    hf, ours, _ = pair
    batch = make_batch(padding)
    ref = hf_logits(hf, batch)
    with torch.no_grad():
        got = ours(**batch)
    keep = batch["attention_mask"].bool()
    assert got.shape == ref.shape
    # measured: 1.5e-5 (Qwen2.5-VL) and 1.8e-5 (Qwen2-VL) on logits of magnitude up to ~7
    assert (got[keep] - ref[keep]).abs().max() <= 3e-5


def test_greedy_generation_matches_transformers(pair):
    hf, ours, _ = pair
    batch = make_batch("left")
    with torch.no_grad():
        ref = hf.generate(**batch, mm_token_type_ids=(batch["input_ids"] == IMG).int(), max_new_tokens=20,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    L = batch["input_ids"].shape[1]
    got = ours.generate(**batch, max_new_tokens=20, stop_token_ids=[])
    assert got == ref[:, L:].tolist()
    assert all(len(set(row)) > 10 for row in got)  # real text, not one token repeated


# ------------------------------------------------------------------ checkpoints
def test_save_roundtrip_loads_in_transformers(pair, tmp_path):
    hf, ours, _ = pair
    ours.save_pretrained(tmp_path)
    cls = type(hf)
    back, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    theirs, again = hf.state_dict(), back.state_dict()
    assert theirs.keys() == again.keys() and all(torch.equal(theirs[k], again[k]) for k in theirs)
    batch = make_batch("left")
    assert torch.equal(hf_logits(back.eval(), batch), hf_logits(hf, batch))  # the same weights, bit for bit


def test_sharded_save_loads_back(pair, tmp_path):
    _, ours, _ = pair
    ours.save_pretrained(tmp_path, max_shard_size=100_000)
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 1
    again = QwenVL.from_pretrained(tmp_path)
    batch = make_batch("left")
    with torch.no_grad():
        assert torch.equal(again(**batch), ours(**batch))


def test_loads_transformers_nested_key_layout(pair, tmp_path):
    from safetensors.torch import load_file, save_file
    _, ours, path = pair
    state = load_file(os.path.join(path, "model.safetensors"))
    renamed = {k.replace("visual.", "model.visual.", 1) if k.startswith("visual.") else
               k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k: v
               for k, v in state.items()}
    save_file(renamed, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    again = QwenVL.from_pretrained(tmp_path)
    batch = make_batch("left")
    with torch.no_grad():
        assert torch.equal(again(**batch), ours(**batch))


def test_missing_keys_are_reported(pair, tmp_path):
    from safetensors.torch import load_file, save_file
    _, _, path = pair
    state = load_file(os.path.join(path, "model.safetensors"))
    state.pop("model.norm.weight")
    state["visual.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    with pytest.raises(KeyError, match=r"model\.norm\.weight.*visual\.extra\.weight"):
        QwenVL.from_pretrained(tmp_path)


# ----------------------------------------------------------------------- packing
def test_packed_row_equals_samples_alone(pair):
    _, ours, _ = pair
    batch = make_batch("right")
    rows = [batch["input_ids"][i][batch["attention_mask"][i].bool()] for i in range(3)]
    packed = torch.cat(rows + [torch.zeros(4, dtype=torch.long)])[None]
    mask = torch.cat([torch.full((len(r),), i + 1) for i, r in enumerate(rows)] + [torch.zeros(4, dtype=torch.long)])
    with torch.no_grad():
        got = ours(packed, batch["pixel_values"], batch["image_grid_thw"], mask[None])[0]
        n0, n1 = GRIDS[0][1] * GRIDS[0][2] + GRIDS[1][1] * GRIDS[1][2], GRIDS[2][1] * GRIDS[2][2]
        alone = [ours(rows[0][None], batch["pixel_values"][:n0], batch["image_grid_thw"][:2])[0],
                 ours(rows[1][None], batch["pixel_values"][n0:n0 + n1], batch["image_grid_thw"][2:])[0],
                 ours(rows[2][None])[0]]
    assert (got[:-4] - torch.cat(alone)).abs().max() <= 1e-5  # measured: 4.3e-6 and 5.6e-6


# ---------------------------------------------------------------- hidden / training
def test_return_hidden_then_logits_equals_forward(pair):
    _, ours, _ = pair
    batch = make_batch("left")
    with torch.no_grad():
        hidden = ours(**batch, return_hidden=True)
        assert hidden.shape[-1] == ours.config.hidden_size
        assert torch.equal(ours.logits(hidden), ours(**batch))


def test_activation_checkpointing_gives_same_gradients(pair):
    _, ours, _ = pair
    batch = make_batch("left")
    grads = []
    for ckpt in (False, True):
        ours.zero_grad()
        ours.train()
        ours.gradient_checkpointing = ckpt
        ours(**batch).logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in ours.parameters()])
    ours.gradient_checkpointing = False
    ours.eval()
    ours.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(*grads))  # recomputing runs the same kernels: exactly equal
    assert grads[0][0].abs().sum() > 0  # the vision tower (first parameter) receives gradient


def test_bf16_load_runs_close_to_fp32(pair):
    _, ours, path = pair
    half = QwenVL.from_pretrained(path, dtype=torch.bfloat16)
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16
    batch = make_batch("left")
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        a, b = half(**batch)[keep], ours(**batch)[keep]
    # bf16 keeps ~3 significant digits; measured: mean |diff| 0.022 and 0.020, top-1 agreement 96% and 98%
    assert torch.isfinite(a).all() and (a - b).abs().mean() < 0.03
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.95


# -------------------------------------------------------------------- generation
# torch.compile on a CPU writes and builds C++ (inductor); without a compiler it cannot run at all.
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.slow  # compiles the vision blocks, the prefill and the decode step: tens of seconds on a cold cache
@pytest.mark.skipif(not CXX, reason="torch.compile on a CPU needs a C++ compiler (set CXX or install g++/clang++)")
def test_compiled_generate_gives_the_eager_tokens(pair):
    """generate(compile=True) runs the vision blocks, the decoder layers' prefill and the decode
    step through torch.compile: the same tokens as eager on left-padded rows with images,
    greedy and sampled, and on one unpadded text-only row (another batch size and cache length,
    so compiled again with those sizes symbolic). The model's own modules stay as they were."""
    _, ours, _ = pair
    batch = make_batch("left")
    keys = list(ours.state_dict())
    for kw in (dict(stop_token_ids=[]), dict(stop_token_ids=[], temperature=1.0, top_p=0.9, seed=5)):
        eager = ours.generate(**batch, max_new_tokens=16, **kw)
        assert ours.generate(**batch, max_new_tokens=16, compile=True, **kw) == eager
        assert all(len(set(row)) > 5 for row in eager)
    row = batch["input_ids"][2:, batch["attention_mask"][2].bool()]
    assert ours.generate(row, max_new_tokens=16, stop_token_ids=[], compile=True) == \
        ours.generate(row, max_new_tokens=16, stop_token_ids=[])
    assert list(ours.state_dict()) == keys  # no compiled wrapper registered as a submodule


def test_batched_generation_equals_rows_alone(pair):
    _, ours, _ = pair
    batch = make_batch("left")
    together = ours.generate(**batch, max_new_tokens=12, stop_token_ids=[])
    n0 = GRIDS[0][1] * GRIDS[0][2] + GRIDS[1][1] * GRIDS[1][2]
    row0 = batch["input_ids"][0][batch["attention_mask"][0].bool()][None]
    alone0 = ours.generate(row0, None, batch["pixel_values"][:n0], batch["image_grid_thw"][:2],
                           max_new_tokens=12, stop_token_ids=[])
    row2 = batch["input_ids"][2][batch["attention_mask"][2].bool()][None]
    alone2 = ours.generate(row2, max_new_tokens=12, stop_token_ids=[])
    assert alone0[0] == together[0] and alone2[0] == together[2]


def test_sampling_is_deterministic_for_a_seed(pair):
    _, ours, _ = pair
    batch = make_batch("left")
    run = lambda seed: ours.generate(**batch, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=seed,
                                     stop_token_ids=[])
    assert run(3) == run(3)
    assert run(3) != run(4)


def test_sampling_with_a_seed_per_row_does_not_depend_on_the_batch(pair):
    """seed=[s0, s1, ...]: each row draws from its own generator, so a row samples the same
    tokens batched with others as alone (a resumed evaluation batches its rows differently)."""
    _, ours, _ = pair
    batch = make_batch("left")
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=0.9, stop_token_ids=[])
    together = ours.generate(**batch, seed=[7, 8, 9], **kw)
    row2 = batch["input_ids"][2][batch["attention_mask"][2].bool()][None]
    assert ours.generate(row2, seed=[9], **kw)[0] == together[2]
    assert ours.generate(row2, seed=[7], **kw)[0] != together[2]  # the seed, not the position, decides


def test_stop_token_ends_row_and_is_excluded(pair):
    _, ours, _ = pair
    batch = make_batch("left")
    full = ours.generate(**batch, max_new_tokens=10, stop_token_ids=[])
    stop = full[0][4]
    got = ours.generate(**batch, max_new_tokens=10, stop_token_ids=[stop])
    for row_full, row in zip(full, got):
        cut = row_full.index(stop) if stop in row_full else len(row_full)
        assert row == row_full[:cut]
    assert all(len(r) == 10 for r in full)


def test_decode_step_logits_equal_the_full_forward_at_that_position(pair):
    """A decode step (one token, attending over the whole static cache with the slots not yet
    written masked) gives the logits the full forward computes at that position, on left-padded
    rows with images."""
    _, ours, _ = pair
    batch = make_batch("left")
    new = ours.generate(**batch, max_new_tokens=6, stop_token_ids=[])
    ids = torch.cat([batch["input_ids"], torch.tensor(new)], 1)
    mask = torch.cat([batch["attention_mask"], torch.ones(3, 6, dtype=torch.long)], 1)
    with torch.no_grad():
        full = ours(ids, batch["pixel_values"], batch["image_grid_thw"], mask)
    L = batch["input_ids"].shape[1]
    steps = []
    real = ours.decode_step
    ours.decode_step = lambda *a: steps.append(real(*a)) or steps[-1]
    try:
        ours.generate(**batch, max_new_tokens=6, stop_token_ids=[])
    finally:
        del ours.decode_step
    assert len(steps) == 5  # the first token comes from the prefill
    for n, logits in enumerate(steps):
        assert (logits - full[:, L + n]).abs().max() <= 2e-5  # measured: 8.4e-6 and 8.3e-6


def test_last_only_layer_equals_last_row_of_full_layer(pair):
    """DecoderLayer(last=True), used by prefill's last layer, gives the full layer's last row and
    writes the same keys/values, with and without a padding mask."""
    _, ours, _ = pair
    batch = make_batch("left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cfg, layer = ours.config, ours.model.layers[0]
    with torch.no_grad():
        x = ours.embed(ids, batch["pixel_values"], batch["image_grid_thw"])
        pos, _ = rope_index(ids, batch["image_grid_thw"], mask, IMG, 2)
        cos, sin = mrope_cos_sin(pos, cfg, x.dtype)
        for m in (attention_mask_4d(mask), None):
            shape = (ids.shape[0], cfg.num_key_value_heads, ids.shape[1], cfg.head_dim)
            caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(2)]
            slots = torch.arange(ids.shape[1])
            full = layer(x, cos, sin, m, caches[0], slots)
            last = layer(x, cos, sin, m, caches[1], slots, last=True)
            assert last.shape == (ids.shape[0], 1, cfg.hidden_size)
            assert (last - full[:, -1:]).abs().max() <= 1e-5  # measured: 4.8e-6 to 5.8e-6
            assert all(torch.equal(a, b) for a, b in zip(*caches))


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample(logits, 1.0, 0.7, g)) for _ in range(200)}
    assert drawn == {0, 1}


def test_temperature_reshapes_the_distribution_as_softmax_of_logits_over_t():
    """Curation samples at 0.7-0.8: a draw at temperature T follows softmax(logits / T), here
    p^(1/T) renormalised, written out by hand (p = .5/.3/.2). 40,000 draws: the standard error of
    each frequency is <= 0.0025, so 0.01 is 4 standard errors; T = 1 vs 0.5 differ by >= 0.09."""
    p = torch.tensor([0.5, 0.3, 0.2])
    logits = torch.log(p).expand(40_000, 3)
    g = torch.Generator().manual_seed(0)
    expected = {0.5: [0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38], 1.0: [0.5, 0.3, 0.2],
                2.0: [x / (0.5 ** 0.5 + 0.3 ** 0.5 + 0.2 ** 0.5) for x in (0.5 ** 0.5, 0.3 ** 0.5, 0.2 ** 0.5)]}
    for t, want in expected.items():
        freq = torch.bincount(sample(logits, t, 1.0, g), minlength=3).float() / 40_000
        assert (freq - torch.tensor(want)).abs().max() < 0.01, (t, freq)


def test_generate_passes_its_temperature_to_the_sampler(pair):
    """A near-zero temperature makes sampling greedy; temperature 1 at the same seed does not."""
    _, ours, _ = pair
    batch = make_batch("left")
    greedy = ours.generate(**batch, max_new_tokens=12, stop_token_ids=[])
    cold = ours.generate(**batch, max_new_tokens=12, stop_token_ids=[], temperature=1e-4, seed=3)
    warm = ours.generate(**batch, max_new_tokens=12, stop_token_ids=[], temperature=1.0, seed=3)
    assert cold == greedy and warm != greedy


def test_greedy_takes_the_first_of_tied_maxima():
    """sample() picks with max().indices: ties go to the lowest id, as argmax (and transformers)
    decide them, also on non-contiguous logits."""
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, 5.0, 5.0, 5.0], [-1.0, -2.0, 7.0, 7.0]])
    assert sample(logits).tolist() == [1, 0, 2]
    assert sample(logits.t().contiguous().t()).tolist() == [1, 0, 2]


def test_one_token_generation_is_the_first_token_of_longer_ones(pair):
    """max_new_tokens=1 runs the prefill only; its token is the longer run's first."""
    _, ours, _ = pair
    batch = make_batch("left")
    first = [row[:1] for row in ours.generate(**batch, max_new_tokens=4, stop_token_ids=[])]
    assert ours.generate(**batch, max_new_tokens=1, stop_token_ids=[]) == first
