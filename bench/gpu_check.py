"""The checks only a GPU can answer, in one script for whoever has one (it also runs on a CPU, slowly,
so a first GPU user meets no typo):

    python bench/gpu_check.py                                    # a tiny random Qwen2.5-VL
    python bench/gpu_check.py --model Qwen2.5-VL-3B-Instruct --steps 20 --nproc 2
    python bench/gpu_check.py --device cpu --steps 2             # what the test suite runs

1. bf16 parity: logits of infimed.QwenVL against transformers' Qwen2_5_VLForConditionalGeneration
   (mm_token_type_ids given, so transformers applies M-RoPE) on the same weights and an image +
   text prompt, in fp32 and in bf16. Printed: max |difference| and the logits' standard deviation.
2. Training: `torchrun --nproc_per_node N train.py --amp bf16` (NCCL on GPUs, gloo on a CPU) for
   --steps steps on a generated colour-question set; the loss must stay finite and fall; tokens/s,
   TFLOP/s and MFU (GPUs: train.py looks up the dense bf16 peak by name, --peak-tflops overrides)
   come from log.jsonl.
Exit status 1 when a check fails.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
from demo import synthetic  # noqa: E402
from image_processor import ImageProcessor  # noqa: E402
from infimed import QwenVL  # noqa: E402


def tiny_checkpoint(path):
    """A random transformers Qwen2.5-VL (2 layers, 2 vision blocks) with a tokenizer that carries
    the real Qwen special tokens, saved as a Hub-style directory."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    tok = synthetic.build_tokenizer(["What color is the square? The square is red, green or blue."] * 20, path,
                                    vocab_size=300)
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, bos_token_id=ids["vision_start_token_id"],
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), tie_word_embeddings=True,
                rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=1e6))
    vision = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                  fullatt_block_indexes=[1], window_size=56)
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                                                        tie_word_embeddings=True, **ids)).save_pretrained(path)


def parity(model_dir, device):
    """max |ours - transformers| of the logits per dtype, and the logits' std, on one prompt."""
    from PIL import Image
    from transformers import Qwen2_5_VLForConditionalGeneration
    tok = data.load_tokenizer(model_dir)
    proc = ImageProcessor(max_pixels=112 * 112)
    image = Image.new("RGB", (112, 84), (200, 40, 40))
    text = data.render_chat([{"role": "user", "content": "<image>What color is the square?"}], True)
    x = data.encode_prompt(text, [image], tok, proc)
    ids, pv, grid = x["input_ids"][None].to(device), x["pixel_values"].to(device), x["image_grid_thw"].to(device)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        ours = QwenVL.from_pretrained(model_dir, dtype=dtype, device=device).eval()
        ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        with torch.no_grad():
            a = ours(ids, pv.to(dtype), grid).float()
            b = ref(input_ids=ids, pixel_values=pv.to(dtype), image_grid_thw=grid,
                    mm_token_type_ids=(ids == image_id).int()).logits.float()
        out[str(dtype).split(".")[1]] = {"max_abs_diff": float((a - b).abs().max()), "logit_std": float(b.std())}
        del ours, ref
    return out


def training(model_dir, work, steps, nproc, device):
    """A short torchrun of train.py; returns its log records."""
    root = os.path.join(work, "synth")
    synthetic.generate(root, n_train=64, n_test=0, seed=0, image_size=56, progress=False)
    out = os.path.join(work, "run")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           os.path.join(ROOT, "train.py"), "--model", model_dir, "--data", os.path.join(root, "train.jsonl"),
           "--out", out, "--global-batch", str(4 * nproc), "--micro-batch", "2", "--epochs", "50",
           "--stop-after", str(steps), "--lr", "1e-4", "--warmup-ratio", "0", "--amp", "bf16", "--device", device,
           "--workers", "0", "--save-every", "100000", "--max-len", "512"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a Qwen2.5-VL checkpoint directory (default: a tiny random one)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--nproc", type=int, default=max(1, torch.cuda.device_count()))
    args = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as work:
        model_dir = args.model or os.path.join(work, "tiny")
        if not args.model:
            tiny_checkpoint(model_dir)
        p = parity(model_dir, args.device)
        for dtype, r in p.items():
            bound = 1e-4 if dtype == "float32" else 0.05 * r["logit_std"]  # bf16: a few % of the logits' scale
            good = r["max_abs_diff"] <= bound
            ok &= good
            print(f"parity {dtype}: max |ours - transformers| {r['max_abs_diff']:.3g} (logit std {r['logit_std']:.3g}, "
                  f"bound {bound:.3g}) {'ok' if good else 'FAILED'}")
        log = training(model_dir, work, args.steps, args.nproc, args.device)
        losses = [r["loss"] for r in log]
        good = len(log) == args.steps and all(map(lambda v: v == v and abs(v) != float("inf"), losses)) \
            and losses[-1] < losses[0]
        ok &= good
        last = log[-1]
        print(f"training: {len(log)} steps on {args.nproc} process(es), loss {losses[0]:.4f} -> {losses[-1]:.4f} "
              f"{'ok' if good else 'FAILED'}; {last['tok_s']:.0f} tokens/s, {last['tflops_s']} TFLOP/s per device"
              + (f", MFU {last['mfu']:.1%}, peak memory {last.get('peak_mem_gb')} GB" if "mfu" in last else
                 " (MFU: GPUs only)"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
