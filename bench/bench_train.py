"""Training-step throughput of train.py on a model with the Qwen2.5-VL-3B shape (widths, heads,
151,936 vocabulary, tied head) but 2 decoder layers and 2 vision blocks, random weights; packing
on vs off on the same samples.

    python bench/bench_train.py            # CPU fp32 here; bf16 autocast + MFU on a GPU

Each step is train.py's: a global batch of 8 samples (2 micro-batches of 4), loss normalized by
the step's supervised tokens, logits only at supervised positions, clip, fused AdamW on GPU.
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

STEPS, GLOBAL, MICRO = 2, 8, 4
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A800": 312e12}  # dense bf16, vendor specs


def samples(cfg, n, seed=0):
    """VQA-like samples: 32-320 tokens, or 128-400 with a 224 x 224 image (16 x 16 patches = 64
    image tokens) for every second one; short answers (12-40 supervised tokens) as in medical
    VQA SFT data."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(128, 400, (1,), generator=g)) if i % 2 == 0 else int(torch.randint(32, 320, (1,), generator=g))
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


def step(net, opt, batches, device, autocast):
    n_sup = sum(train.supervised_count(b) for b in batches)
    for b in batches:
        inputs = {k: b[k].to(device) for k in ("input_ids", "labels", "attention_mask")}
        if len(b["image_grid_thw"]):
            inputs.update(pixel_values=b["pixel_values"].to(device), image_grid_thw=b["image_grid_thw"].to(device))
        with autocast:
            ce = net(**inputs)
        (ce / n_sup).backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


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
    data = samples(cfg, GLOBAL * (STEPS + 1))
    peak = next((v for k, v in PEAK.items() if cuda and k in torch.cuda.get_device_name()), None)
    print(f"model: 3B shape, {cfg.num_hidden_layers} decoder layers, {cfg.vision.depth} vision blocks, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params; {device}"
          f"{' bf16 autocast' if cuda else ' fp32'}; {STEPS} timed steps of {GLOBAL} samples per mode")
    rows = {}
    for packing in (False, True):
        collate = train.Collate(data, pad_id=0, max_len=1024, packing=packing)
        plan = [list(range(s * GLOBAL, (s + 1) * GLOBAL)) for s in range(STEPS + 1)]
        steps = [[collate(p[:MICRO]), collate(p[MICRO:])] for p in plan]
        flops = tokens = slots = sup = 0
        step(net, opt, steps[0], device, autocast)  # warm-up step, untimed
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for batches in steps[1:]:
            step(net, opt, batches, device, autocast)
            flops += train.flops_per_step(batches, cfg, n_text, n_vision)
            tokens += sum(int((b["attention_mask"] > 0).sum()) for b in batches)
            slots += sum(b["attention_mask"].numel() for b in batches)
            sup += sum(train.supervised_count(b) for b in batches)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        rows["packed" if packing else "padded"] = (1 - tokens / slots, tokens / dt, sup / dt, flops / dt, dt / STEPS)
    print("\n| batching | padding | tokens/s | supervised tokens/s | TFLOP/s | MFU | s/step |")
    print("|---|---|---|---|---|---|---|")
    for name, (pad, tps, sps, fps, sec) in rows.items():
        mfu = f"{fps / peak:.1%}" if peak else "n/a (CPU)"
        print(f"| {name} | {pad:.1%} | {tps:,.0f} | {sps:,.0f} | {fps / 1e12:.3f} | {mfu} | {sec:.2f} |")
    print(f"\npacked / padded tokens/s: {rows['packed'][1] / rows['padded'][1]:.2f}x "
          f"(the same samples; padding {rows['padded'][0]:.1%} -> {rows['packed'][0]:.1%})")


if __name__ == "__main__":
    main()
