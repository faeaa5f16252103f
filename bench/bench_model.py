"""Speed of infimed.QwenVL against transformers' Qwen2.5-VL on the same config, weights and inputs:
forward+backward of a batch with images, and greedy generation of 64 new tokens for 8 prompts
with images (KV cache in both; the generated tokens are checked to be identical), split into
prefill (generating 1 token: vision tower, prompt, first token) and per-token decode
((time for 64 tokens - time for 1) / 63).
Two sizes: "tiny" (per-token work is small, so framework overhead dominates, as in decoding on a
GPU) and "small" (matrix products dominate on a CPU). CPU fp32 here; bf16 on a GPU when present.
Both wall-clock and process CPU seconds are reported (medians of interleaved runs). One torch
thread by default: on a shared 2-core machine multi-threaded timings of many small operations
swing by 10x from run to run (pass --threads 0 for torch's default).
On a CPU the "bound" line per size is transformers' generate time over the time our generate
spends inside matrix-product and attention kernels (torch profiler, self time), work that any
implementation with the same outputs repeats; the rest of our time is overhead. The last lines
(--no-compile skips them) time both generators with torch.compile, compilation excluded and
printed apart: ours compiles its prefill layers and decode step, transformers its forward
over a static cache for the decode steps.

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

SIZES = {  # (text config, vision config, vocab)
    "tiny": (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, mrope_section=[2, 3, 3]),
             dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=[1]), 1000),
    "small": (dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=2, mrope_section=[4, 6, 6]),
              dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, fullatt_block_indexes=[1, 3]), 4000),
}


def build(size, device, dtype):
    text, vision, vocab = SIZES[size]
    text = dict(text)
    section = text.pop("mrope_section")
    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(text, vocab_size=vocab, rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.1,
                         rope_parameters=dict(rope_type="default", mrope_section=section, rope_theta=1e6)),
        vision_config=dict(vision, out_hidden_size=text["hidden_size"], window_size=112),
        image_token_id=vocab - 8, vision_start_token_id=vocab - 10, vision_end_token_id=vocab - 9,
        tie_word_embeddings=True)
    hf = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = QwenVL.from_pretrained(d, dtype=dtype, device=device)
    return hf.to(device=device, dtype=dtype), ours


def batch(cfg, n_rows, grid, device, seed=0):
    """n_rows prompts of varied text length around one image each, left-padded."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    text = lambda n: torch.randint(1, cfg.vocab_size - 20, (n,), generator=g).tolist()
    rows = [text(8 + 3 * i) + [cfg.vision_start_token_id] + [cfg.image_token_id] * (t * h * w // 4)
            + [cfg.vision_end_token_id] + text(12) for i in range(n_rows)]
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
    """Median (wall, cpu) seconds of each; runs interleaved so that other load hits both alike."""
    def once(fn):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - w, time.process_time() - c

    out = fn_ref(), fn_ours()  # warm-up; the outputs are returned for a correctness check
    runs = [(once(fn_ref), once(fn_ours)) for _ in range(repeat)]
    med = lambda i, j: statistics.median(r[i][j] for r in runs)
    return (med(0, 0), med(1, 0), med(0, 1), med(1, 1)), out


def row(name, t, scale=1.0, digits=3):
    hw, ow, hc, oc = (v * scale for v in t)
    f = f".{digits}f"
    return f"| {name} | {hw:{f}} | {ow:{f}} | {hw / ow:.2f}x | {hc:{f}} | {oc:{f}} | {hc / oc:.2f}x |"


@click.command()
@click.option("--sizes", default="tiny,small", help="comma-separated: tiny, small")
@click.option("--rows", default=8)
@click.option("--new-tokens", default=64)
@click.option("--repeat", default=5, help="interleaved timed runs per measure")
@click.option("--threads", default=1, help="torch CPU threads (0: torch default)")
@click.option("--compile/--no-compile", "compiled", default=True,
              help="also time generation with both decoders compiled (torch.compile; a C++ compiler on CPU)")
def main(sizes, rows, new_tokens, repeat, threads, compiled):
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    print(f"device {device} ({torch.get_num_threads()} threads), {str(dtype).replace('torch.', '')}, "
          f"{rows} prompts with one 16x16-patch image each, {new_tokens} new tokens")
    print("| size: measure | transformers wall | infimed wall | speed-up | transformers cpu | infimed cpu "
          "| speed-up |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes.split(","):
        hf, ours = build(size, device, dtype)
        b = batch(ours.config, rows, (1, 16, 16), device)
        mm = (b["input_ids"] == ours.config.image_token_id).int()

        def fwd_bwd(model, **extra):
            model.zero_grad(set_to_none=True)
            out = model(**b, **extra)
            (out.logits if hasattr(out, "logits") else out).float().logsumexp(-1).mean().backward()

        hf.train(), ours.train()
        t_fb, _ = compare(lambda: fwd_bwd(hf, mm_token_type_ids=mm), lambda: fwd_bwd(ours), repeat)
        hf.eval(), ours.eval()

        def hf_gen(n, **extra):
            with torch.no_grad():
                return hf.generate(**b, mm_token_type_ids=mm, max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, eos_token_id=None, pad_token_id=0, **extra)

        ours_gen = lambda n, **extra: ours.generate(**b, max_new_tokens=n, stop_token_ids=[], **extra)
        t_gen, (ref, got) = compare(lambda: hf_gen(new_tokens), lambda: ours_gen(new_tokens), repeat)
        t_pre, (ref1, got1) = compare(lambda: hf_gen(1), lambda: ours_gen(1), repeat)
        L = b["input_ids"].shape[1]
        same = ref[:, L:].tolist() == got and ref1[:, L:].tolist() == got1
        t_dec = tuple((g - p) / (new_tokens - 1) for g, p in zip(t_gen, t_pre))
        print(row(f"{size}: forward+backward (s)", t_fb))
        print(row(f"{size}: generate (s){'' if same else ' (TOKENS DIFFER)'}", t_gen))
        print(row(f"{size}: generate, prefill (ms)", t_pre, 1e3, 1))
        print(row(f"{size}: generate, decode per token (ms)", t_dec, 1e3, 2))
        if device == "cpu":  # on a GPU the kernels run asynchronously: profile device time there
            kernels = kernel_seconds(lambda: ours_gen(new_tokens))
            print(f"| {size}: generate, bound | in kernels {kernels:.3f} s of our {t_gen[1]:.3f} s | "
                  f"at most {t_gen[0] / kernels:.2f}x | | | |")
        if compiled:
            compiled_rows(size, hf_gen, ours_gen, ref[:, L:].tolist(), new_tokens, repeat, t_gen)


def compiled_rows(size, hf_gen, ours_gen, tokens, new_tokens, repeat, t_eager):
    """Both generate()s through torch.compile, compilation excluded (its time is printed): ours
    compiles its vision blocks and decoder layers for the prefill and its decode step
    (generate(compile=True)); transformers compiles its forward over a static cache for the
    decode steps, its prefill runs eager (its documented route; it does so by itself on GPUs
    only, so CPU is switched on, and its default "reduce-overhead" mode is CUDA graphs, so
    "default" here). The last row sets ours compiled against transformers' eager generate, timed
    before (medians of separately interleaved runs)."""
    from transformers import CompileConfig
    # compiled code is cached per Python function, across models: without a reset the second size
    # would get a graph with symbolic sizes (automatic dynamic shapes), where its own process
    # would compile fixed ones
    torch._dynamo.reset()
    cc = CompileConfig(mode="default" if not torch.cuda.is_available() else "reduce-overhead")
    cc._compile_all_devices = True
    hf_c = lambda n: hf_gen(n, cache_implementation="static", compile_config=cc)
    ours_c = lambda n: ours_gen(n, compile=True)
    first = []
    for fn in (hf_c, ours_c):  # the first call for a shape compiles
        t = time.perf_counter()
        fn(new_tokens)
        first.append(time.perf_counter() - t)
    t_gen, (ref, got) = compare(lambda: hf_c(new_tokens), lambda: ours_c(new_tokens), repeat)
    L = ref.shape[1] - new_tokens
    same = ref[:, L:].tolist() == got == tokens
    print(row(f"{size}: generate, both compiled (s){'' if same else ' (TOKENS DIFFER)'}", t_gen))
    print(f"| {size}: generate, compiling (first call, s) | {first[0]:.1f} | {first[1]:.1f} | | | | |")
    print(row(f"{size}: generate, transformers eager vs ours compiled (s)",
              (t_eager[0], t_gen[1], t_eager[2], t_gen[3])))


KERNELS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_attention_math")


def kernel_seconds(fn):
    """CPU self time of the matrix-product and attention ops in one call of fn: the floor that
    identical outputs cannot go below without faster kernels."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in KERNELS) / 1e6


if __name__ == "__main__":
    main()
