"""Qwen2.5-VL and Qwen2-VL in plain PyTorch: vision tower, Qwen2 decoder with M-RoPE, Hub
checkpoint loading/saving and KV-cache generation. Read it top to bottom:

    config -> vision tower -> decoder -> rope_index -> QwenVL (forward, load/save, generate)

Run a checkpoint on a text prompt (tokenizer read from the same directory):

    python infimed.py /path/to/Qwen2.5-VL-3B-Instruct --prompt "The capital of France is"

Facts (key names, shapes, defaults) follow the public Qwen2-VL / Qwen2.5-VL checkpoints and the
technical reports; numbers in comments name where they come from. Still images only: video
inputs (<|video_pad|>, second_per_grid_ts) are not handled.
"""
import json
import os
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


# ----------------------------------------------------------------------------------- config
@dataclass
class VisionConfig:
    model_type: str = "qwen2_5_vl"  # "qwen2_5_vl": RMSNorm+SwiGLU+windows; "qwen2_vl": LayerNorm+QuickGELU
    depth: int = 32
    hidden_size: int = 1280  # ViT width (Qwen2-VL calls it embed_dim)
    out_hidden_size: int = 2048  # LLM width the merger projects to (Qwen2-VL calls it hidden_size)
    intermediate_size: int = 3420  # Qwen2-VL: embed_dim * mlp_ratio
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2  # a still image is repeated to 2 frames
    spatial_merge_size: int = 2  # 2x2 patches -> one LLM token
    window_size: int = 112  # pixels: 112 / 14 = 8 patches = 4 merged units per window side
    fullatt_block_indexes: list = field(default_factory=lambda: [7, 15, 23, 31])  # 3B/7B
    tokens_per_second: int = 2  # video time axis only; videos are not handled here
    hidden_act: str = "silu"

    @classmethod
    def from_dict(cls, d, model_type):
        d = dict(d)
        d["in_channels"] = d.get("in_channels", d.get("in_chans", 3))
        if model_type == "qwen2_vl":  # rename: embed_dim is the ViT width, hidden_size the LLM width
            width = d.get("embed_dim", 1280)
            d["out_hidden_size"], d["hidden_size"] = d.get("hidden_size", 1536), width
            d["intermediate_size"] = int(width * d.get("mlp_ratio", 4))
            d["fullatt_block_indexes"] = list(range(d.get("depth", 32)))  # every block is global
            d.setdefault("hidden_act", "quick_gelu")
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names and k != "model_type"}, model_type=model_type)

    def to_dict(self):
        d = dict(depth=self.depth, num_heads=self.num_heads, in_chans=self.in_channels,
                 in_channels=self.in_channels, patch_size=self.patch_size, hidden_act=self.hidden_act,
                 spatial_merge_size=self.spatial_merge_size, temporal_patch_size=self.temporal_patch_size)
        if self.model_type == "qwen2_vl":
            ratio = self.intermediate_size / self.hidden_size
            return dict(d, embed_dim=self.hidden_size, hidden_size=self.out_hidden_size,
                        mlp_ratio=int(ratio) if ratio.is_integer() else ratio)
        return dict(d, hidden_size=self.hidden_size, out_hidden_size=self.out_hidden_size,
                    intermediate_size=self.intermediate_size, window_size=self.window_size,
                    fullatt_block_indexes=list(self.fullatt_block_indexes),
                    tokens_per_second=self.tokens_per_second)


@dataclass
class QwenVLConfig:
    model_type: str = "qwen2_5_vl"
    vocab_size: int = 151936  # Qwen2 tokenizer, padded (3B)
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: list = field(default_factory=lambda: [16, 24, 24])  # (t, h, w) rotary pairs
    max_position_embeddings: int = 128000
    tie_word_embeddings: bool = True
    image_token_id: int = 151655  # <|image_pad|>
    video_token_id: int = 151656  # <|video_pad|>
    vision_start_token_id: int = 151652  # <|vision_start|>
    vision_end_token_id: int = 151653  # <|vision_end|>
    bos_token_id: int = 151643  # <|endoftext|>
    eos_token_id: object = 151645  # <|im_end|>; an int or a list
    vision: VisionConfig = field(default_factory=VisionConfig)

    @classmethod
    def from_dict(cls, d):
        model_type = d.get("model_type", "qwen2_5_vl")
        if model_type not in ("qwen2_5_vl", "qwen2_vl"):
            raise ValueError(f"model_type {model_type!r} is neither 'qwen2_5_vl' nor 'qwen2_vl'")
        text = {**d, **d.get("text_config", {})}  # flat (Hub) or nested (transformers >= 4.52)
        rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
        kw = {k: text[k] for k in cls.__dataclass_fields__ if k in text and k not in ("vision", "model_type")}
        kw["rope_theta"] = rope.get("rope_theta", text.get("rope_theta", 1000000.0))
        kw["mrope_section"] = list(rope.get("mrope_section", [16, 24, 24]))
        kw["tie_word_embeddings"] = bool(d.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
        if kw.get("num_key_value_heads") is None:
            kw["num_key_value_heads"] = text["num_attention_heads"]
        vision = VisionConfig.from_dict(d.get("vision_config", {}), model_type)
        return cls(model_type=model_type, vision=vision, **kw)

    @classmethod
    def from_pretrained(cls, path):
        with open(os.path.join(path, "config.json")) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self):
        """The original flat Hub layout (what Qwen/Qwen2.5-VL-3B-Instruct ships), which transformers
        4.x/5.x and vLLM all read."""
        d = {k: v for k, v in asdict(self).items() if k not in ("vision", "mrope_section")}
        arch = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration"}
        return dict(d, architectures=[arch[self.model_type]], hidden_act="silu", attention_dropout=0.0,
                    use_sliding_window=False, sliding_window=None, max_window_layers=self.num_hidden_layers,
                    rope_scaling={"type": "mrope", "rope_type": "default",
                                  "mrope_section": list(self.mrope_section)},
                    vision_config=self.vision.to_dict())

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads


# ------------------------------------------------------------------------------- shared bits
class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):  # normalize in fp32, scale in the input dtype (as the reference does)
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


ACT = {"silu": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
       "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x)}  # QuickGELU constant from CLIP


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden, bias, act="silu"):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.act = ACT[act]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    return x * cos + rotate_half(x) * sin


# ------------------------------------------------------------------------------ vision tower
def vision_layout(grid_thw, merge, window=None):
    """Index bookkeeping for a batch of images, all pure integer math.
    Returns (hw, order, window_lens, frame_lens): hw (N, 2) row/col of every patch in input order
    (rows of pixel_values come grouped by 2x2 merge unit); order, a permutation of merge units that
    sorts them into attention windows of window x window merged units (per frame, windows and the
    units inside them row-major; border windows are smaller); window_lens / frame_lens, patch
    counts of each window / frame in that order. window=None: one window per frame, order = identity."""
    hw, order, window_lens, frame_lens, offset = [], [], [], [], 0
    for t, h, w in grid_thw.tolist():
        gh, gw = h // merge, w // merge
        r = torch.arange(h).view(gh, merge, 1, 1).expand(gh, merge, gw, merge)
        c = torch.arange(w).view(1, 1, gw, merge).expand(gh, merge, gw, merge)
        hw.append(torch.stack([r.transpose(1, 2).flatten(), c.transpose(1, 2).flatten()], -1).repeat(t, 1))
        frame_lens += [h * w] * t
        ws = window or max(gh, gw)
        ti, ri, ci = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij")
        win = (ti * -(-gh // ws) + ri // ws) * -(-gw // ws) + ci // ws  # window number, row-major
        order.append(torch.argsort(((win * ws + ri % ws) * ws + ci % ws).flatten()) + offset)
        counts = torch.bincount(win.flatten())
        window_lens += (counts[counts > 0] * merge * merge).tolist()
        offset += t * gh * gw
    return torch.cat(hw), torch.cat(order), window_lens, frame_lens


class Segments:
    """Attention restricted to contiguous segments of a flat sequence (cu_seqlens-style): the
    segments are padded into a batch so one scaled_dot_product_attention call serves them all."""

    def __init__(self, lens, device):
        lens_t = torch.tensor(lens, device=device)
        self.s, self.m = len(lens), max(lens)
        self.equal = min(lens) == self.m  # all the same length: padding is a reshape, no mask needed
        self.seg = torch.repeat_interleave(torch.arange(self.s, device=device), lens_t)  # segment of a token
        starts = torch.cumsum(lens_t, 0) - lens_t
        self.off = torch.arange(len(self.seg), device=device) - starts[self.seg]  # its slot in the segment
        self.mask = None if self.equal else (torch.arange(self.m, device=device) < lens_t[:, None])[:, None, None]

    def pad(self, t):  # (N, H, D) -> (S, H, M, D)
        if self.equal:
            return t.view(self.s, self.m, *t.shape[1:]).transpose(1, 2)
        return t.new_zeros(self.s, self.m, *t.shape[1:]).index_put((self.seg, self.off), t).transpose(1, 2)

    def attend(self, q, k, v):  # (N, H, D) each
        o = F.scaled_dot_product_attention(self.pad(q), self.pad(k), self.pad(v), attn_mask=self.mask)
        return o.transpose(1, 2).flatten(0, 1) if self.equal else o.transpose(1, 2)[self.seg, self.off]


class VisionAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x, cos, sin, segments):
        q, k, v = self.qkv(x).view(x.shape[0], 3, self.heads, -1).unbind(1)
        q, k = (apply_rope(t.float(), cos, sin).to(x.dtype) for t in (q, k))  # vision rope in fp32
        return self.proj(segments.attend(q, k, v).reshape(x.shape[0], -1))


class VisionMLP(nn.Module):  # Qwen2-VL: fc1 -> QuickGELU -> fc2
    def __init__(self, dim, hidden, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), ACT[act]

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        if cfg.model_type == "qwen2_5_vl":
            self.norm1, self.norm2 = RMSNorm(d, 1e-6), RMSNorm(d, 1e-6)
            self.mlp = SwiGLU(d, cfg.intermediate_size, bias=True, act=cfg.hidden_act)
        else:
            self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
            self.mlp = VisionMLP(d, cfg.intermediate_size, cfg.hidden_act)
        self.attn = VisionAttention(d, cfg.num_heads)

    def forward(self, x, cos, sin, segments):
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d, unit = cfg.hidden_size, cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.ln_q = RMSNorm(d, 1e-6) if cfg.model_type == "qwen2_5_vl" else nn.LayerNorm(d, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(unit, unit), nn.GELU(), nn.Linear(unit, cfg.out_hidden_size))

    def forward(self, x):  # 4 consecutive patch rows = one 2x2 merge unit
        return self.mlp(self.ln_q(x).reshape(-1, self.mlp[0].in_features))


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Module()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.patch_embed.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel, stride=kernel, bias=False)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    def forward(self, pixel_values, grid_thw, ckpt=False, blocks=None):
        """pixel_values (N, C*T*P*P) patch rows, grid_thw (n_images, 3) -> (N / 4, out_hidden_size).
        `blocks`: callables standing in for self.blocks (their compiled versions, from generate)."""
        cfg, unit = self.cfg, self.cfg.spatial_merge_size ** 2
        n_patches = int(grid_thw.prod(-1).sum())
        if pixel_values.shape[0] != n_patches:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patch rows, image_grid_thw "
                             f"{grid_thw.tolist()} needs {n_patches}")
        windowed = cfg.model_type == "qwen2_5_vl"  # Qwen2-VL: global attention in every block
        window = cfg.window_size // cfg.spatial_merge_size // cfg.patch_size if windowed else None
        hw, order, window_lens, frame_lens = vision_layout(grid_thw.cpu(), cfg.spatial_merge_size, window)
        dev = pixel_values.device
        order = order.to(dev)
        patch_order = (order[:, None] * unit + torch.arange(unit, device=dev)).flatten()
        # A Conv3d whose stride equals its kernel is a linear map of each flattened patch row.
        w = self.patch_embed.proj.weight
        x = F.linear(pixel_values.to(w.dtype), w.view(w.shape[0], -1))[patch_order]
        # 2D rotary: a quarter of the head dim each for row and column frequencies, theta 10000.
        hd = cfg.hidden_size // cfg.num_heads
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd // 2, 2, dtype=torch.float, device=dev) / (hd // 2)))
        ang = (hw.to(dev)[patch_order][..., None].float() * inv_freq).flatten(1)  # (N, hd/2): rows, cols
        ang = torch.cat([ang, ang], -1)[:, None]
        cos, sin = ang.cos(), ang.sin()
        full, local = Segments(frame_lens, dev), Segments(window_lens, dev)
        for i, blk in enumerate(self.blocks if blocks is None else blocks):
            seg = full if i in cfg.fullatt_block_indexes else local
            if ckpt:
                x = checkpoint(blk, x, cos, sin, seg, use_reentrant=False)
            else:
                x = blk(x, cos, sin, seg)
        merged = self.merger(x)
        return torch.empty_like(merged).index_copy_(0, order, merged)  # back to raster order


# ----------------------------------------------------------------------------------- decoder
class Attention(nn.Module):
    def __init__(self, cfg: QwenVLConfig):
        super().__init__()
        self.heads, self.kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.heads * hd, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv_heads * hd, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv_heads * hd, bias=True)
        self.o_proj = nn.Linear(self.heads * hd, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache=None, slots=None, last=False):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.heads, -1).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.kv_heads, -1).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.kv_heads, -1).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # static (B, KV, T, hd) cache: write this call's keys at `slots` (a tensor)
            cache[0].index_copy_(2, slots, k)
            cache[1].index_copy_(2, slots, v)
            if L == 1:  # decode: attend over every slot, the mask hides padding and slots not yet written,
                k, v = cache  # so the shapes never change and a compiled step is built once (as gpt-fast)
        if last:  # only the last position's output is wanted: one query, which sees every key
            q, mask, L = q[:, :, -1:], None if mask is None else mask[..., -1:, :], 1
        if L == 1 and self.heads != self.kv_heads:  # decode: a kv head's query heads act as one query
            o = F.scaled_dot_product_attention(q.reshape(B, self.kv_heads, -1, q.shape[-1]), k, v, attn_mask=mask)
            return self.o_proj(o.reshape(B, 1, -1))  # (head h uses kv head h // group, as in the weights)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and L > 1,
                                           enable_gqa=self.heads != self.kv_heads)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: QwenVLConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, bias=False)

    def forward(self, x, cos, sin, mask, cache=None, slots=None, last=False):
        """last=True: keys/values of every position (to the cache), the output of the last only."""
        h = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, slots, last)
        x = (x[:, -1:] if last else x) + h
        return x + self.mlp(self.post_attention_layernorm(x))


def mrope_cos_sin(position_ids, cfg: QwenVLConfig, dtype):
    """M-RoPE: the head_dim/2 rotary frequencies are split into mrope_section chunks (t, h, w);
    chunk i rotates by position axis i, and the same angles serve both halves of the head."""
    hd, dev = cfg.head_dim, position_ids.device
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float, device=dev) / hd))
    axis = torch.repeat_interleave(torch.arange(3, device=dev), torch.tensor(cfg.mrope_section, device=dev))
    ang = position_ids[axis].permute(1, 2, 0).float() * inv_freq  # (B, L, hd/2)
    ang = torch.cat([ang, ang], -1)[:, None]  # (B, 1, L, hd): broadcast over heads
    return ang.cos().to(dtype), ang.sin().to(dtype)


def attention_mask_4d(sample_ids):
    """(B, L) sample numbers (0 = pad) -> (B, 1, L, L) bool: causal within the same sample only.
    Padding rows attend to themselves so no softmax row is empty (their outputs are ignored)."""
    L = sample_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=sample_ids.device).tril()
    same = (sample_ids[:, :, None] == sample_ids[:, None, :]) & (sample_ids[:, None, :] > 0)
    return ((same & causal) | torch.eye(L, dtype=torch.bool, device=sample_ids.device))[:, None]


# -------------------------------------------------------------------------------- rope index
def rope_index(input_ids, image_grid_thw=None, attention_mask=None, image_token_id=151655, spatial_merge_size=2):
    """M-RoPE positions (3, B, L) and per-row deltas (B,).
    Text advances all three axes together; an image (a run of image tokens, t*h*w/4 of them)
    gets (t, row, col) on the merged grid offset by the current position; text after it resumes
    at max(image positions) + 1. attention_mask values k >= 1 number the samples packed into a row
    (positions restart at 0 for each), 0 is padding (position 0). delta = next position - number
    of tokens of the row's last sample: a generated token n steps after the prompt sits at
    n_prompt_tokens + delta + n."""
    B, L = input_ids.shape
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    pos = torch.zeros(3, B, L, dtype=torch.long)
    deltas = torch.zeros(B, dtype=torch.long)
    grids = [] if image_grid_thw is None else image_grid_thw.tolist()
    used = 0
    is_img = (input_ids == image_token_id).cpu()
    mask = mask.cpu()
    for b in range(B):
        # runs of equal (sample id, is-image) left to right
        key = mask[b] * 2 + is_img[b]
        change = torch.nonzero(key[1:] != key[:-1]).flatten() + 1
        bounds = [0] + change.tolist() + [L]
        sid, cur, n_last = 0, 0, 0
        for s, e in zip(bounds[:-1], bounds[1:]):
            k = int(mask[b, s])
            if k == 0:
                continue
            if k != sid:
                sid, cur, n_last = k, 0, 0
            n_last += e - s
            if not is_img[b, s]:
                pos[:, b, s:e] = torch.arange(cur, cur + e - s)
                cur += e - s
                continue
            i = s
            while i < e:  # a run of image tokens may hold several adjacent images
                if used >= len(grids):
                    raise ValueError(f"row {b}: more image tokens than images in image_grid_thw ({len(grids)})")
                t, h, w = grids[used]
                gh, gw = h // spatial_merge_size, w // spatial_merge_size
                n = t * gh * gw
                if i + n > e:
                    raise ValueError(f"row {b}: image {used} needs {n} image tokens, the run has {e - i} left")
                tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij")
                pos[:, b, i:i + n] = torch.stack([tt.flatten(), hh.flatten(), ww.flatten()]) + cur
                cur += max(t, gh, gw)
                i, used = i + n, used + 1
        deltas[b] = cur - n_last
    if used != len(grids):
        raise ValueError(f"image_grid_thw has {len(grids)} images but the input ids hold {used}")
    return pos.to(input_ids.device), deltas.to(input_ids.device)


# ------------------------------------------------------------------------------------ model
class QwenVL(nn.Module):
    def __init__(self, config: QwenVLConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTower(config.vision)
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False  # True: non-reentrant activation checkpointing (DDP-safe)
        self.apply(self._init)

    @staticmethod
    def _init(m):  # normal(0, 0.02) as the reference initializer_range
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv3d)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    # ----- forward
    def embed(self, input_ids, pixel_values=None, image_grid_thw=None, vision_blocks=None):
        x = self.model.embed_tokens(input_ids)
        if pixel_values is None:
            return x
        if image_grid_thw is None:
            raise ValueError("pixel_values given without image_grid_thw")
        feats = self.visual(pixel_values, image_grid_thw, ckpt=self.gradient_checkpointing and self.training,
                            blocks=vision_blocks)
        is_img = input_ids == self.config.image_token_id
        if int(is_img.sum()) != feats.shape[0]:
            raise ValueError(f"{int(is_img.sum())} image tokens in input_ids but the images give "
                             f"{feats.shape[0]} features (image_grid_thw {image_grid_thw.tolist()})")
        return x.masked_scatter(is_img[..., None], feats.to(x.dtype))

    def forward(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None,
                position_ids=None, return_hidden=False):
        """Logits (B, L, V) in fp32, or the final-norm hidden states (B, L, D) with return_hidden."""
        x = self.embed(input_ids, pixel_values, image_grid_thw)
        if position_ids is None:
            position_ids, _ = rope_index(input_ids, image_grid_thw, attention_mask,
                                         self.config.image_token_id, self.config.vision.spatial_merge_size)
        cos, sin = mrope_cos_sin(position_ids, self.config, x.dtype)
        plain = attention_mask is None or bool((attention_mask == 1).all())
        mask = None if plain else attention_mask_4d(attention_mask)
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask)
        x = self.model.norm(x)
        return x if return_hidden else self.logits(x)

    def logits(self, hidden):
        return self.lm_head(hidden).float()

    # ----- checkpoints
    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None):
        """Load a Hub checkpoint directory (single or sharded safetensors; keys `visual.*`/`model.*`
        or transformers >= 4.52's `model.visual.*`/`model.language_model.*`). dtype=None keeps the
        stored dtype (bf16 for the released Qwen checkpoints). Returns the model in eval mode."""
        from safetensors.torch import load_file
        config = QwenVLConfig.from_pretrained(path)
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.exists(os.path.join(path, "model.safetensors")):
            files = ["model.safetensors"]
        else:
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {path}")
        state = {}
        for name in files:
            for k, v in load_file(os.path.join(path, name), device=str(device or "cpu")).items():
                k = k.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
                state[k] = v
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        dtype = dtype or state["model.embed_tokens.weight"].dtype
        with torch.device("meta"):
            model = cls(config)
        expected = set(model.state_dict()) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"checkpoint {path} does not match the config: missing {missing[:20]} "
                           f"({len(missing)}), unexpected {unexpected[:20]} ({len(unexpected)})")
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        return model.eval()

    def save_pretrained(self, path, max_shard_size="5GB"):
        """config.json plus safetensors in the original Hub layout, sharded above max_shard_size
        (bytes or a string like "5GB") with model.safetensors.index.json."""
        from safetensors.torch import save_file
        os.makedirs(path, exist_ok=True)
        if isinstance(max_shard_size, str):
            units = {"KB": 1e3, "MB": 1e6, "GB": 1e9}
            max_shard_size = int(float(max_shard_size[:-2]) * units[max_shard_size[-2:].upper()])
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()
                 if not (k == "lm_head.weight" and self.config.tie_word_embeddings)}
        shards, size = [{}], 0
        for k, v in state.items():
            nbytes = v.numel() * v.element_size()
            if shards[-1] and size + nbytes > max_shard_size:
                shards.append({})
                size = 0
            shards[-1][k], size = v, size + nbytes
        cfg = dict(self.config.to_dict(), torch_dtype=str(next(iter(state.values())).dtype).replace("torch.", ""))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        gen_cfg = os.path.join(path, "generation_config.json")
        if not os.path.exists(gen_cfg):  # stop ids for transformers and vLLM; an existing file is kept
            # as Qwen2.5-VL-Instruct's: stop at <|im_end|> (eos) or <|endoftext|> (bos), pad with <|endoftext|>
            bos, eos = self.config.bos_token_id, self.config.eos_token_id
            with open(gen_cfg, "w") as f:
                json.dump({"bos_token_id": bos, "eos_token_id": [eos, bos] if bos is not None else eos,
                           "pad_token_id": bos}, f, indent=2)
        if len(shards) == 1:
            return save_file(shards[0], os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(path, name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(v.numel() * v.element_size() for v in state.values())
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    # ----- generation
    def prefill(self, x, cos, sin, mask, caches, layers=None):
        """The prompt's embeddings (B, L, D) through the decoder, keys and values written to cache
        slots 0..L-1 -> logits (B, V) of the next token. Only the last layer's last position is
        needed, so that layer computes one output row (`last`)."""
        layers = self.model.layers if layers is None else layers
        slots = torch.arange(x.shape[1], device=x.device)
        for i, (layer, cache) in enumerate(zip(layers, caches)):
            x = layer(x, cos, sin, mask, cache, slots, last=i == len(caches) - 1)
        return self.logits(self.model.norm(x[:, -1]))

    def decode_step(self, tok, caches, cos, sin, bias, slot):
        """One new token per row, tok (B,), written to cache slot `slot` (a 1-element LongTensor)
        -> logits (B, V). The layers' own forward on a length-1 input; the additive bias (B, 1, 1, T)
        is -inf at padding, and the slots after `slot` are masked here, so every shape is the same
        for the whole generation and torch.compile builds this step once."""
        x = self.model.embed_tokens(tok[:, None])
        mask = bias.masked_fill(torch.arange(bias.shape[-1], device=bias.device) > slot, float("-inf"))
        for layer, cache in zip(self.model.layers, caches):
            x = layer(x, cos, sin, mask, cache, slot)
        return self.logits(self.model.norm(x[:, -1]))

    def compiled(self):
        """(decode_step, decoder layers, vision blocks) through torch.compile, for generate(compile=
        True); built on first use and kept for later calls. Compiling fuses the many small ops
        (norms, rotary, cache writes, SwiGLU) into a few kernels; on a CPU it needs a C++ compiler.
        A new size (cache length, batch, prompt length, image layout) compiles once more with that
        size symbolic (torch.compile's automatic dynamic shapes). The compiled layers share this
        model's parameters and are kept outside its modules: training, state_dict and
        save_pretrained see the model as it was."""
        if "_compiled" not in self.__dict__:
            self.__dict__["_compiled"] = (torch.compile(self.decode_step),
                                          [torch.compile(layer) for layer in self.model.layers],
                                          [torch.compile(block) for block in self.visual.blocks])
        return self.__dict__["_compiled"]

    @torch.inference_mode()  # no autograd bookkeeping at all (cheaper than no_grad per op)
    def generate(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                 max_new_tokens=64, temperature=0.0, top_p=1.0, seed=None, stop_token_ids=None, compile=False):
        """Left-padded prompts (B, L) -> one list of new token ids per row. Greedy when
        temperature == 0, else temperature + top-p sampling (torch.Generator seeded with `seed`;
        a list gives each row its own generator, so that a row's text does not depend on the rows
        batched with it).
        A row stops after max_new_tokens or at a stop token, which is NOT included in its list.
        stop_token_ids=None uses the config's eos_token_id; pass [] to never stop early.
        Images are encoded once at prefill; decoding reuses a preallocated key/value cache.
        compile=True runs the vision blocks, the prefill's decoder layers and decode_step through
        torch.compile (compiled()): the first call pays the compilation, later calls run faster,
        with the same tokens (bench/bench_model.py times both against transformers)."""
        cfg = self.config
        B, L = input_ids.shape
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if bool((mask[:, -1] == 0).any()) or int(mask.max()) > 1:
            raise ValueError("generate needs left-padded prompts, one sample per row (0/1 attention_mask)")
        if stop_token_ids is None:
            eos = cfg.eos_token_id
            stop_token_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        stops = torch.tensor(stop_token_ids, dtype=torch.long, device=input_ids.device)
        gen = None if seed is None else torch.Generator(input_ids.device).manual_seed(seed) if isinstance(seed, int) \
            else [torch.Generator(input_ids.device).manual_seed(s) for s in seed]
        decode, layers, blocks = self.compiled() if compile else (self.decode_step, self.model.layers, None)
        pos, deltas = rope_index(input_ids, image_grid_thw, mask, cfg.image_token_id, cfg.vision.spatial_merge_size)
        x = self.embed(input_ids, pixel_values, image_grid_thw, vision_blocks=blocks)
        T = L + max_new_tokens
        shape = (B, cfg.num_key_value_heads, T, cfg.head_dim)
        caches = [(x.new_zeros(shape), x.new_zeros(shape)) for _ in self.model.layers]
        padded = not bool(mask.all())  # without padding, the prefill's plain causal attention needs no mask
        logits = self.prefill(x, *mrope_cos_sin(pos, cfg, x.dtype), attention_mask_4d(mask) if padded else None,
                              caches, layers)

        # Decode: an additive bias over the cache slots, -inf at padding (decode_step masks the
        # slots after its own). Decode positions are text positions (all three M-RoPE axes equal),
        # so their rotary tables are computed once: (steps, B, 1, 1, hd), step n's broadcasts over heads.
        bias = torch.zeros(B, 1, 1, T, dtype=x.dtype, device=x.device)
        bias[:, 0, 0, :L].masked_fill_(mask == 0, float("-inf"))
        steps = (deltas + mask.sum(1))[:, None] + torch.arange(max_new_tokens, device=x.device)
        dec_cos, dec_sin = (t.permute(2, 0, 1, 3)[:, :, :, None]
                            for t in mrope_cos_sin(steps.expand(3, -1, -1), cfg, x.dtype))
        slot = torch.arange(L, T, device=x.device)[:, None]  # step n writes cache slot L + n
        out = torch.empty(B, max_new_tokens, dtype=torch.long, device=x.device)
        done = torch.zeros(B, dtype=torch.bool, device=x.device)
        n = 0
        for n in range(max_new_tokens):
            tok = sample(logits, temperature, top_p, gen)
            out[:, n] = tok
            if len(stop_token_ids):  # no stop tokens: nothing to check (no host sync per token)
                done |= torch.isin(tok, stops)
                if bool(done.all()):
                    break
            if n == max_new_tokens - 1:
                break
            logits = decode(tok, caches, dec_cos[n], dec_sin[n], bias, slot[n])
        result = []
        for row in out[:, :n + 1].tolist():
            cut = next((i for i, t in enumerate(row) if t in stop_token_ids), len(row))
            result.append(row[:cut])
        return result


def sample(logits, temperature=0.0, top_p=1.0, generator=None):
    """(B, V) logits -> (B,) token ids: argmax, or temperature + nucleus (top-p) sampling
    (`generator`: one torch.Generator, or a list of one per row)."""
    if temperature <= 0:  # max's indices: the same first-maximum rule as argmax (and transformers)
        return logits.max(-1).indices
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:  # keep the smallest set of top tokens whose mass reaches top_p
        sp, idx = probs.sort(-1, descending=True)
        sp[(sp.cumsum(-1) - sp) >= top_p] = 0
        probs = torch.zeros_like(probs).scatter_(-1, idx, sp)
    if isinstance(generator, list):
        return torch.cat([torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, generator)]).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


if __name__ == "__main__":
    import click

    @click.command()
    @click.argument("checkpoint")
    @click.option("--prompt", default="Hello", help="plain text (no chat template)")
    @click.option("--max-new-tokens", default=32)
    @click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32")
    def main(checkpoint, prompt, max_new_tokens, dtype):
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(checkpoint)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = QwenVL.from_pretrained(checkpoint, dtype=getattr(torch, dtype), device=device)
        ids = torch.tensor([tok.encode(prompt)], device=device)
        new = model.generate(ids, max_new_tokens=max_new_tokens)[0]
        print(prompt + tok.decode(new))

    main()
