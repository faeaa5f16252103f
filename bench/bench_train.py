"""Training-step throughput of train.py on a model with the Qwen2.5-VL-3B shape (widths, heads,
151,936 vocabulary, tied head) but 2 decoder layers and 2 vision blocks, random weights; packing
on vs off on the same samples.

    python bench/bench_train.py            # CPU fp32 here; bf16 autocast + MFU on a GPU

Each step is train.py's: a global batch of 4 samples in one micro-batch, the loss the summed
token cross-entropy over the step's supervised count, logits only at supervised positions;
forward + backward is timed per batching mode (padded to the longest sample, or packed into one
row), the clip + AdamW step once on its own.
FLOPs per step (train.flops_per_step): 6 x params x tokens for the decoder layers, 6 x D x V
per supervised token for the head, 6 x params per patch for the vision blocks, plus attention
(6 x layers x D x s^2 per causal sample of length s; 12 x width x patches x span in the
vision tower). MFU = FLOP/s / dense bf16 peak (GPU only; on CPU the achieved FLOP/s is shown).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from infimed import QwenVL, QwenVLConfig, VisionConfig  # noqa: E402

GLOBAL, MICRO = 4, 4  # one step of 4 samples (a single micro-batch) per mode: minutes on 2 CPU cores
MAX_LEN = 2048  # packed row length: all 4 samples share one row
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A800": 312e12}  # dense bf16, vendor specs


def samples(cfg, n, seed=0):
    """VQA-like samples: 32-320 tokens, or 128-400 with a 224 x 224 image (16 x 16 patches = 64
    image tokens) for every second one; short answers (12-40 supervised tokens) as in medical
    VQA SFT data."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        low, high = (128, 400) if i % 2 == 0 else (32, 320)
        length = int(torch.randint(low, high, (1,), generator=g))
        ids = torch.randint(0, 150000, (length,), generator=g)
        labels = torch.full_like(ids, -100)
        answer = int(torch.randint(12, 40, (1,), generator=g))
        labels[-answer:] = ids[-answer:]
        s = {"input_ids": ids, "labels": labels, "pixel_values": torch.zeros(0, 1176),
             "image_grid_thw": torch.zeros(0, 3, dtype=torch.long)}
        if i % 2 == 0:
            ids[4] = cfg.vision_start_token_id
            ids[5:5 + 64] = cfg.image_token_id
            ids[69] = cfg.vision_end_token_id
            s.update(pixel_values=torch.randn(256, 1176, generator=g), image_grid_thw=torch.tensor([[1, 16, 16]]))
        out.append(s)
    return out


def forward_backward(net, batches, device, autocast):
    """train.py's micro-steps: each loss is its sum of token CE over the step's supervised count."""
    n_sup = sum(train.supervised_count(b) for b in batches)
    for b in batches:
        inputs = {k: b[k].to(device) for k in ("input_ids", "labels", "attention_mask")}
        if len(b["image_grid_thw"]):
            inputs.update(pixel_values=b["pixel_values"].to(device), image_grid_thw=b["image_grid_thw"].to(device))
        with autocast:
            ce = net(**inputs)
        (ce / n_sup).backward()


def timed(fn, cuda):
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    cfg = QwenVLConfig(num_hidden_layers=2, vision=VisionConfig(depth=2, fullatt_block_indexes=[1]))
    model = QwenVL(cfg).to(device).train()
    net = train.SFTLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    n_vision = sum(p.numel() for p in model.visual.blocks.parameters())
    n_text = sum(p.numel() for p in model.model.layers.parameters())
    data = samples(cfg, GLOBAL)
    peak = next((v for k, v in PEAK.items() if cuda and k in torch.cuda.get_device_name()), None)
    print(f"model: 3B shape, {cfg.num_hidden_layers} decoder layers, {cfg.vision.depth} vision blocks, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params; {device}"
          f"{' bf16 autocast' if cuda else ' fp32'}; one step of {GLOBAL} samples per mode", flush=True)
    warm = train.Collate(data, pad_id=0, max_len=MAX_LEN, packing=False)([0])
    forward_backward(net, [warm], device, autocast)  # warm-up, untimed
    opt_s = timed(lambda: (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0), opt.step()), cuda)
    opt.zero_grad(set_to_none=True)
    rows = {}
    for packing in (False, True):
        collate = train.Collate(data, pad_id=0, max_len=MAX_LEN, packing=packing)
        batches = [collate(list(range(s, s + MICRO))) for s in range(0, GLOBAL, MICRO)]
        dt = timed(lambda: forward_backward(net, batches, device, autocast), cuda)
        opt.zero_grad(set_to_none=True)
        flops = train.flops_per_step(batches, cfg, n_text, n_vision)
        tokens = sum(int((b["attention_mask"] > 0).sum()) for b in batches)
        slots = sum(b["attention_mask"].numel() for b in batches)
        sup = sum(train.supervised_count(b) for b in batches)
        rows["packed" if packing else "padded"] = (1 - tokens / slots, tokens / dt, sup / dt, flops / dt, dt)
        print(f"  {'packed' if packing else 'padded'}: {dt:.1f} s", flush=True)
    print("\n| batching | padding | tokens/s | supervised tokens/s | TFLOP/s | MFU | fwd+bwd s |")
    print("|---|---|---|---|---|---|---|")
    for name, (pad, tps, sps, fps, sec) in rows.items():
        mfu = f"{fps / peak:.1%}" if peak else "n/a (CPU)"
        print(f"| {name} | {pad:.1%} | {tps:,.1f} | {sps:,.1f} | {fps / 1e12:.3f} | {mfu} | {sec:.2f} |")
    print(f"\nclip + AdamW step over {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params: {opt_s:.2f} s "
          "(memory-bound; excluded from the rows above)")
    print(f"packed / padded tokens/s: {rows['packed'][1] / rows['padded'][1]:.2f}x "
          f"(the same samples; padding {rows['padded'][0]:.1%} -> {rows['packed'][0]:.1%})")


if __name__ == "__main__":
    main()
