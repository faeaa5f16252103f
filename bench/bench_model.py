"""Speed of infimed.QwenVL against transformers' Qwen2.5-VL on the same config, weights and inputs:
forward+backward of a batch with images, and greedy generation of 64 new tokens for 8 prompts
with images (KV cache in both). CPU fp32 by default; bf16 on a GPU when one is present.

    python bench/bench_model.py
"""
import os
import statistics
import sys
import tempfile
import time

import click
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from infimed import QwenVL  # noqa: E402

VOCAB, V_START, V_END, IMG = 4000, 3990, 3991, 3992


def build(device, dtype):
    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters=dict(rope_type="default", mrope_section=[4, 6, 6], rope_theta=1e6)),
        vision_config=dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
                           fullatt_block_indexes=[1, 3], window_size=112),
        image_token_id=IMG, vision_start_token_id=V_START, vision_end_token_id=V_END, tie_word_embeddings=True)
    hf = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = QwenVL.from_pretrained(d, dtype=dtype, device=device)
    return hf.to(device=device, dtype=dtype), ours


def batch(n_rows, grid, device, seed=0):
    """n_rows prompts of varied text length around one image each, left-padded."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    rows = [torch.randint(1, 3000, (8 + 3 * i,), generator=g).tolist() + [V_START] + [IMG] * (t * h * w // 4)
            + [V_END] + torch.randint(1, 3000, (12,), generator=g).tolist() for i in range(n_rows)]
    L = max(map(len, rows))
    ids = torch.zeros(n_rows, L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, L - len(r):], mask[i, L - len(r):] = torch.tensor(r), 1
    pixels = torch.randn(n_rows * t * h * w, 1176, generator=g)
    grids = torch.tensor([grid] * n_rows)
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                                               image_grid_thw=grids).items()}


def compare(fn_ref, fn_ours, repeat):
    """Median seconds of each, runs interleaved so that load from other processes hits both alike."""
    def once(fn):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    out = fn_ref(), fn_ours()  # warm-up; the outputs are returned for a correctness check
    times = [(once(fn_ref), once(fn_ours)) for _ in range(repeat)]
    return [statistics.median(t) for t in zip(*times)], out


@click.command()
@click.option("--rows", default=8)
@click.option("--new-tokens", default=64)
@click.option("--repeat", default=2, help="generation repeats; forward+backward runs 3x as many")
@click.option("--threads", default=0, help="torch CPU threads (0: torch default)")
def main(rows, new_tokens, repeat, threads):
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hf, ours = build(device, dtype)
    b = batch(rows, (1, 16, 16), device)
    mm = (b["input_ids"] == IMG).int()

    def fwd_bwd(model, **extra):
        model.zero_grad(set_to_none=True)
        out = model(**b, **extra)
        (out.logits if hasattr(out, "logits") else out).float().logsumexp(-1).mean().backward()

    hf.train(), ours.train()
    (t_hf_fb, t_our_fb), _ = compare(lambda: fwd_bwd(hf, mm_token_type_ids=mm), lambda: fwd_bwd(ours), 3 * repeat)
    hf.eval(), ours.eval()

    def hf_gen():
        with torch.no_grad():
            return hf.generate(**b, mm_token_type_ids=mm, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=False, eos_token_id=None, pad_token_id=0)

    def our_gen():
        return ours.generate(**b, max_new_tokens=new_tokens, stop_token_ids=[])

    (t_hf_gen, t_our_gen), (ref, got) = compare(hf_gen, our_gen, repeat)
    L = b["input_ids"].shape[1]
    same = ref[:, L:].tolist() == got
    print(f"device {device} ({torch.get_num_threads()} threads), dtype {str(dtype).replace('torch.', '')}, batch {rows} x {L} prompt tokens "
          f"({rows} images of 16x16 patches), {new_tokens} new tokens")
    print("| measure | transformers (s) | infimed (s) | speed-up |")
    print("|---|---|---|---|")
    print(f"| forward+backward | {t_hf_fb:.3f} | {t_our_fb:.3f} | {t_hf_fb / t_our_fb:.2f}x |")
    print(f"| generate | {t_hf_gen:.3f} | {t_our_gen:.3f} | {t_hf_gen / t_our_gen:.2f}x |")
    print(f"greedy tokens identical: {same}")


if __name__ == "__main__":
    main()
