"""Data core for infimed: tokenizer loading, the Qwen2.5-VL chat template and loss mask, ShareGPT
records with validation, the dataset, batching, packing and the length-grouped sampler. Images go
through image_processor.py.

    python -m pytest -q tests/test_data.py      # the tests pin every piece against transformers

Everything here is plain Python + numpy/torch/PIL; transformers is only used to load tokenizers.
"""
import json
import os
import warnings
from collections import Counter

import numpy as np
import torch
from PIL import Image

from tally import Tally

# ---- Tokenizer -------------------------------------------------------------------------------
# The Qwen2 special tokens in their real order: ids 151643..151656 in the real vocabulary
# (<|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, <|vision_start|> 151652,
# <|vision_end|> 151653, <|image_pad|> 151655, <|video_pad|> 151656; Qwen2.5-VL-3B-Instruct
# tokenizer_config.json). A locally built tokenizer appends them after its own BPE vocabulary,
# so code always reads ids from the tokenizer.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
IMAGE_PLACEHOLDER = "<image>"  # ShareGPT / LLaVA convention: one per image, in order
DEFAULT_SYSTEM = "You are a helpful assistant."  # the template's default system prompt

def load_tokenizer(path):
    """A transformers fast tokenizer from a checkpoint directory (ours or a real Qwen2.5-VL one)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    processor_template = os.path.join(path, "chat_template.json")  # the processor's copy
    if tok.chat_template is None and os.path.exists(processor_template):
        with open(processor_template) as f:
            tok.chat_template = json.load(f)["chat_template"]
    missing = [t for t in SPECIAL_TOKENS if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if missing:
        raise ValueError(f"{path}: tokenizer lacks the Qwen2 special tokens {missing}; use a "
                         "Qwen2-VL / Qwen2.5-VL tokenizer or one written by demo.synthetic.build_tokenizer")
    return tok


def pad_id(tokenizer):
    """The id every batch is padded with: the tokenizer's pad token (<|endoftext|> in Qwen2-VL and
    Qwen2.5-VL's tokenizer_config.json), <|endoftext|> when a tokenizer names none. Padded
    positions are masked everywhere, so the choice only has to be one valid id, the same one."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.convert_tokens_to_ids("<|endoftext|>")


def stop_ids(tokenizer):
    """Generation stops at <|im_end|> (the end of the assistant's turn) or <|endoftext|>: the
    eos_token_id list of Qwen2.5-VL-Instruct's generation_config.json, [151645, 151643]."""
    return [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]


# ---- Chat template and loss mask -------------------------------------------------------------
VISION_SPAN = "<|vision_start|><|image_pad|><|vision_end|>"  # what the template emits per image


class SampleError(ValueError):
    """A record that cannot be used. `reason` is a short key that loaders count:
    empty, non_alternating, bad_role, bad_content, special_tokens, image_count_mismatch,
    image_in_assistant, image_missing, image_corrupt, image_aspect, too_long, invalid_json,
    invalid_encoding."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def _content_text(content):
    """Message content as template text: a string with `<image>` placeholders, or a list of
    template parts ({"type": "image"} / {"type": "text", "text": ...}). `<image>` plus one
    newline right after it is one image part: LLaVA-style data writes "<image>\\nQuestion" while
    inference parts [image, "Question"] render no newline after <|vision_end|>; mapping both to
    the same text keeps training and inference prompts identical."""
    if isinstance(content, str):
        return content.replace(IMAGE_PLACEHOLDER + "\n", VISION_SPAN).replace(
            IMAGE_PLACEHOLDER, VISION_SPAN)
    out = []
    for part in content:  # same tests, same order as the template
        if part.get("type") == "image" or "image" in part or "image_url" in part:
            out.append(VISION_SPAN)
        elif part.get("type") == "video" or "video" in part:
            raise ValueError("video content is not supported")
        elif "text" in part:
            out.append(part["text"])
    return "".join(out)


def render_chat(messages, add_generation_prompt=False):
    """The Qwen2.5-VL-Instruct chat template (its tokenizer_config.json) in Python: a default
    system turn unless the first message is one, `<|im_start|>{role}\\n{content}<|im_end|>\\n`
    per turn, `<|im_start|>assistant\\n` as generation prompt, VISION_SPAN per image (encode()
    expands the pad to the image's token count). Renders training samples and evaluation prompts alike."""
    text = []
    if messages and messages[0]["role"] != "system":
        text.append(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
    for m in messages:
        text.append(f"<|im_start|>{m['role']}\n{_content_text(m['content'])}<|im_end|>\n")
    if add_generation_prompt:
        text.append("<|im_start|>assistant\n")
    return "".join(text)


def check_messages(messages, n_images, for_training=True):
    """Raise SampleError unless messages are: optional system, then user/assistant alternating
    starting with user (ending with assistant for training, with user for a prompt), string
    content without special tokens, one `<image>` per image, no image in an assistant turn."""
    messages = [m if isinstance(m, dict) else {} for m in messages or []]
    body = messages[1:] if messages and messages[0].get("role") == "system" else messages
    if not body:
        raise SampleError("empty", "conversation has no user/assistant turns; add them")
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise SampleError("bad_role", f"message {i} has role {role!r}; use system, user or "
                                          "assistant (human/gpt in the `conversations` dialect)")
        if role == "system" and i != 0:
            raise SampleError("non_alternating", f"message {i} is a system message; only the first "
                                                 "message may be one")
        if not isinstance(content, str):
            raise SampleError("bad_content", f"message {i} content is {type(content).__name__}; "
                                             "use a string with <image> placeholders")
        if found := [t for t in SPECIAL_TOKENS if t in content]:
            raise SampleError("special_tokens", f"message {i} ({role}) contains special tokens "
                              f"{found}; remove them (the chat template adds its own)")
        if role == "assistant" and IMAGE_PLACEHOLDER in content:
            raise SampleError("image_in_assistant", f"message {i} is an assistant turn with an "
                              "<image> placeholder; images belong in user (or system) turns")
    n_placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    roles, last = [m["role"] for m in body], "assistant" if for_training else "user"
    if roles != (["user", "assistant"] * len(roles))[:len(roles)] or roles[-1] != last:
        raise SampleError("non_alternating", f"roles {roles} must alternate user/assistant, "
                          f"starting with user and ending with {last}")
    if n_placeholders != n_images:
        raise SampleError("image_count_mismatch", f"{n_placeholders} <image> placeholders but "
                          f"{n_images} images; put exactly one <image> in the text per image")


def _image_error(im, e):
    """The SampleError for an image that raised `e` (a missing, too extreme or unreadable file)."""
    name = "a PIL image" if isinstance(im, Image.Image) else im
    if isinstance(e, FileNotFoundError):
        return SampleError("image_missing", f"image {name} does not exist; fix the path (relative "
                           "paths resolve against the data file's folder) or drop the record")
    if isinstance(e, ValueError):  # smart_resize refuses the shape; PIL's bad image data
        reason = "image_aspect" if "aspect ratio" in str(e) else "image_corrupt"
        return SampleError(reason, f"image {name}: {e}")
    # OSError / DecompressionBombError / anything a decoder raises: an unreadable image
    return SampleError("image_corrupt", f"cannot read image {name}: {type(e).__name__}: {e}; re-export it or "
                                        "drop the record")


def load_images(images, image_processor):
    """(pixel_values, image_grid_thw) for a record's images; SampleError naming the unusable one."""
    out = [(torch.zeros(0, 3 * image_processor.temporal_patch_size * image_processor.patch_size ** 2),
            torch.zeros(0, 3, dtype=torch.int64))]
    for im in images:
        try:
            if not isinstance(im, Image.Image) and not os.path.isfile(im):
                raise FileNotFoundError(im)
            out.append(image_processor(im))
        except Exception as e:  # whatever a decoder raises, the record is unusable, not the run
            raise _image_error(im, e) from e
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def image_token_counts(images, image_processor):
    """LLM tokens per image from the file headers only (no decoding); for length planning. The
    EXIF orientation is not needed: a 90-degree turn swaps height and width, and the token count,
    (h / 28) x (w / 28) after smart_resize, is the same either way (reading EXIF from a PNG would
    make PIL decode the whole image)."""
    counts = []
    for im in images:
        try:
            if isinstance(im, Image.Image):
                w, h = im.size
            else:
                with Image.open(im) as f:
                    w, h = f.size
            rh, rw = image_processor.target_size(h, w)
        except Exception as e:
            raise _image_error(im, e) from e
        counts.append(rh * rw // (image_processor.patch_size * image_processor.merge_size) ** 2)
    return counts


def _tokenize_turns(messages, tokenizer, tokens_per_image):
    """(ids, labels, n_images) per turn, the default system turn included, built turn by turn
    (never by searching the ids for "assistant"): `<|im_start|>` + tokens("{role}\\n{content}")
    + `<|im_end|>` + tokens("\\n"). Special tokens split the text the tokenizer sees, so the
    pieces tokenize exactly like the whole conversation. Assistant turns supervise content and
    `<|im_end|>`; a token straddling the role header (content starting with a newline merges
    into the header's newline) stays unsupervised."""
    ids_of = tokenizer.convert_tokens_to_ids
    im_start, im_end, pad = ids_of("<|im_start|>"), ids_of("<|im_end|>"), ids_of("<|image_pad|>")
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if messages and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}] + list(messages)
    headers = [f"{m['role']}\n" for m in messages]
    enc = tokenizer([h + _content_text(m["content"]) for h, m in zip(headers, messages)],
                    add_special_tokens=False, return_offsets_mapping=True)
    turns, k = [], 0
    for m, h, seg, offsets in zip(messages, headers, enc["input_ids"], enc["offset_mapping"]):
        ids, labels, n_img = [im_start], [-100], 0
        train = m["role"] == "assistant"
        for t, (start, _) in zip(seg, offsets):
            if t == pad:  # expand each image to its token count (t*h*w / merge**2)
                ids += [pad] * tokens_per_image[k]
                labels += [-100] * tokens_per_image[k]
                k, n_img = k + 1, n_img + 1
            else:
                ids.append(t)
                labels.append(t if train and start >= len(h) else -100)
        ids += [im_end] + newline
        labels += [im_end if train else -100] + [-100] * len(newline)
        turns.append((ids, labels, n_img))
    return turns


def _fit_turns(turns, max_len):
    """Over-length policy -> (turns kept, exchanges dropped): the system turn, the first exchange,
    then as many whole exchanges as fit in max_len; later ones (and their images) are dropped.
    Never cuts inside a turn (so never inside an image span); SampleError ("too_long") when the
    first exchange alone does not fit."""
    first = sum(len(t[0]) for t in turns[:3])  # system + first exchange
    if first > max_len:
        raise SampleError("too_long", f"the first exchange alone has {first} tokens > max_len="
                          f"{max_len}; raise max_len or lower max_pixels")
    n = len(turns)
    while sum(len(t[0]) for t in turns[:n]) > max_len:
        n -= 2
    return turns[:n], (len(turns) - n) // 2


def plan_sample(record, tokenizer, tokens_per_image, max_len=4096):
    """(ids, labels, n_images_kept, exchanges_dropped) for a validated training record."""
    check_messages(record["messages"], len(tokens_per_image))
    turns, dropped = _fit_turns(_tokenize_turns(record["messages"], tokenizer, tokens_per_image),
                                max_len)
    ids = [t for turn in turns for t in turn[0]]
    labels = [t for turn in turns for t in turn[1]]
    return ids, labels, sum(turn[2] for turn in turns), dropped


def encode(record, tokenizer, image_processor, max_len=4096):
    """A canonical record -> dict(input_ids, labels (-100 = unsupervised), pixel_values,
    image_grid_thw, exchanges_dropped), or SampleError; over-length policy: _fit_turns."""
    images = list(record.get("images") or [])
    check_messages(record["messages"], len(images))
    pixel_values, grid = load_images(images, image_processor)
    per_image = (grid.prod(-1) // image_processor.merge_size ** 2).tolist()
    ids, labels, n_kept, dropped = plan_sample(record, tokenizer, per_image, max_len)
    n_rows = int(grid[:n_kept].prod(-1).sum())
    return {"input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": pixel_values[:n_rows], "image_grid_thw": grid[:n_kept],
            "exchanges_dropped": dropped}


def encode_prompt(text, images, tokenizer, image_processor):
    """Already-rendered text with one <|image_pad|> per image (an evaluation prompt from
    render_chat, a gme embedding string) -> the encode() dict with nothing supervised: each pad
    expanded to its image's token count. collate(..., padding_side="left") batches these for
    generation."""
    pad = "<|image_pad|>"
    pieces, images = text.split(pad), list(images)
    if len(pieces) - 1 != len(images):
        raise ValueError(f"prompt has {len(pieces) - 1} image slots for {len(images)} images")
    pixel_values, grid = load_images(images, image_processor)  # SampleError naming a bad image
    counts = (grid.prod(-1) // image_processor.merge_size ** 2).tolist()
    text = pieces[0] + "".join(pad * n + p for n, p in zip(counts, pieces[1:]))
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    return {"input_ids": ids, "labels": torch.full_like(ids, -100), "pixel_values": pixel_values,
            "image_grid_thw": grid}


# ---- ShareGPT records ------------------------------------------------------------------------
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}  # the `conversations` dialect (from/value) and the canonical one


def to_canonical(raw, image_root=None):
    """One ShareGPT record in either dialect -> {"messages": [...], "images": [...]}, other keys
    (id, meta, ...) kept, relative image paths joined to `image_root`. Raises SampleError."""
    if not isinstance(raw, dict):
        raise SampleError("bad_content", f"record is a {type(raw).__name__}, not a JSON object")
    if "messages" in raw:
        turns, role_key, text_key = raw["messages"], "role", "content"
    elif "conversations" in raw:
        turns, role_key, text_key = raw["conversations"], "from", "value"
    else:
        raise SampleError("empty", "record has neither `messages` (role/content) nor "
                                   "`conversations` (from/value)")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise SampleError("bad_content", "`messages`/`conversations` must be a list of objects")
    messages = []
    for i, t in enumerate(turns):
        role = _ROLES.get(t.get(role_key))
        if role is None:
            raise SampleError("bad_role", f"turn {i} has {role_key}={t.get(role_key)!r}; use "
                              "human/gpt/system or user/assistant/system")
        messages.append({"role": role, "content": t.get(text_key)})
    images = raw.get("images", raw.get("image")) or []  # LLaVA files use a single "image"
    if not isinstance(images, (str, list, tuple)):
        raise SampleError("bad_content", f"`images` is a {type(images).__name__}; use a list of file paths")
    images = [images] if isinstance(images, str) else list(images)
    if not all(isinstance(im, (str, Image.Image)) for im in images):
        raise SampleError("bad_content", "`images` must be a list of file paths")
    if image_root is not None:
        images = [im if isinstance(im, Image.Image) or os.path.isabs(im)
                  else os.path.join(image_root, im) for im in images]
    check_messages(messages, len(images))
    extra = {k: v for k, v in raw.items() if k not in ("messages", "conversations", "images", "image")}
    return {**extra, "messages": messages, "images": images}


def _skip(report, where, e, strict):
    """Count SampleError `e` under its reason, with a message naming file and record as its
    example; strict: raise it with that message instead."""
    msg = f"{report.name} {where}: {e}"
    if strict:
        raise SampleError(e.reason, msg) from e
    report.count(e.reason, example=msg)


def read_sharegpt(path, strict=False, image_root=None):
    """Read a ShareGPT JSON array or JSONL file -> (records, Tally). Bad records are skipped and
    counted per reason, each reason with an example naming file and record; strict=True raises
    on the first instead. Relative image paths resolve against `image_root` (default: the
    file's folder). Images are opened later, by encode() (SampleError)."""
    records, _, report = _read_sharegpt(path, strict, image_root)
    return records, report


def _read_sharegpt(path, strict, image_root):
    """read_sharegpt plus where each kept record came from ("line 7" / "record 3")."""
    image_root = os.path.dirname(os.path.abspath(path)) if image_root is None else image_root
    with open(path, "rb") as f:
        raw_bytes = f.read()
    if raw_bytes.lstrip()[:1] == b"[":  # a JSON array: one parse error makes the file unusable
        try:
            raws, where = list(enumerate(json.loads(raw_bytes.decode("utf-8")))), "record"
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            what = "invalid JSON" if isinstance(e, json.JSONDecodeError) else f"unreadable ({type(e).__name__})"
            raise ValueError(f"{path}: {what} ({str(e)[:120]}); fix the file or write it as JSONL, one record "
                             "per line") from e
    else:  # JSONL: a bad line is one skipped record
        raws = [(i + 1, line) for i, line in enumerate(raw_bytes.split(b"\n")) if line.strip()]
        where = "line"
    records, places, report = [], [], Tally(path)
    report.read = len(raws)
    for i, raw in raws:
        try:
            if where == "line":
                raw = _json_line(raw)
            records.append(to_canonical(raw, image_root))
            places.append(f"{where} {i}")
        except SampleError as e:
            _skip(report, f"{where} {i}", e, strict)
    return records, places, report


def _json_line(raw):
    """One JSONL line (bytes) -> its object; SampleError for bad UTF-8 or bad JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SampleError("invalid_encoding", f"not UTF-8 (byte {e.start}); re-save the file as UTF-8") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SampleError("invalid_json", f"invalid JSON ({e.msg} at column {e.colno}); fix or delete the line") from e
    except RecursionError as e:
        raise SampleError("invalid_json", "JSON nested too deeply to read; fix or delete the line") from e


def write_sharegpt(records, path):
    """Write records as JSONL in the canonical dialect ({"messages": [...], "images": [...]},
    then any other keys the records carry), to a temporary name renamed when complete."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:  # renamed when complete: never half a file
        for i, r in enumerate(records):
            images = list(r.get("images") or [])
            if any(not isinstance(im, (str, os.PathLike)) for im in images):
                raise ValueError(f"record {i}: images must be paths to write JSONL; save the "
                                 "PIL images to files first")
            out = {"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]],
                   "images": [str(im) for im in images],
                   **{k: v for k, v in r.items() if k not in ("messages", "images")}}
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)


# ---- Dataset, batching, packing, sampling ----------------------------------------------------
class SFTDataset(torch.utils.data.Dataset):
    """Training samples from a ShareGPT file (or a list of canonical records). Construction
    validates every record and measures its exact token length from text and image headers (no
    pixel decoding) under encode()'s over-length policy; unusable records are counted in
    `self.report`, a Tally (strict=True raises), conversations cut to max_len in
    `samples_shortened` and `exchanges_dropped` (summary() prints both). `self.lengths` feeds
    packing and length-grouped sampling. Items are encode() dicts, or {"skip": reason,
    "message": ...} for an image that fails only at decode time (`collate` drops and counts
    those: batch["n_skipped"], batch["skipped"])."""

    def __init__(self, path_or_records, tokenizer, image_processor, max_len=4096, strict=False):
        from tqdm import tqdm
        if isinstance(path_or_records, (str, os.PathLike)):
            records, places, self.report = _read_sharegpt(path_or_records, strict, None)
        else:
            records = list(path_or_records)
            places = [f"record {i}" for i in range(len(records))]
            self.report = Tally("<records>")
            self.report.read = len(records)
        self.tokenizer, self.image_processor, self.max_len, self.strict = (
            tokenizer, image_processor, max_len, strict)
        self.records, self.lengths, self.exchanges_dropped, self.samples_shortened = [], [], 0, 0
        for rec, where in zip(tqdm(records, desc="scanning", disable=len(records) < 2000), places):
            try:
                rec = to_canonical(rec)  # either dialect; validated
                counts = image_token_counts(rec["images"], image_processor)
                ids, _, _, dropped = plan_sample(rec, tokenizer, counts, max_len)
            except SampleError as e:
                _skip(self.report, where, e, strict)
                continue
            self.records.append(rec)
            self.lengths.append(len(ids))
            self.exchanges_dropped += dropped
            self.samples_shortened += dropped > 0
        if not self.records:
            raise ValueError("no usable training record:\n" + self.summary())

    def summary(self):
        """The read report as text, and the exchanges cut from over-length conversations."""
        shortened = (f"\n  shortened {self.samples_shortened} over-length conversations: {self.exchanges_dropped} "
                     "later exchanges dropped (kept whole up to max_len)") if self.exchanges_dropped else ""
        return self.report.lines() + shortened

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        try:
            return encode(self.records[i], self.tokenizer, self.image_processor, self.max_len)
        except SampleError as e:
            if self.strict:
                raise
            warnings.warn(f"sample {i} skipped ({e.reason}): {e}")
            return {"skip": e.reason, "message": str(e)}


def is_skipped(sample):
    """A sample that could not be encoded (None, or SFTDataset's {"skip": reason} marker)."""
    return sample is None or "skip" in sample


def pack(lengths, max_len):
    """Rows of sample indices whose lengths sum to at most max_len (best-fit decreasing, ties in
    index order). A packed batch is `collate([[dataset[i] for i in row] for row in rows], pad_id)`."""
    import bisect
    rows, free = [], []  # free: sorted (space left, row index)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        if n > max_len:
            raise ValueError(f"sample {i} has {n} tokens > max_len={max_len}")
        j = bisect.bisect_left(free, (n, -1))  # the fullest row that still has room
        if j < len(free):
            space, r = free.pop(j)
        else:
            space, r = max_len, len(rows)
            rows.append([])
        rows[r].append(i)
        bisect.insort(free, (space - n, r))
    return rows


def collate(batch, pad_id, padding_side="right"):
    """Samples (encode dicts) or packed rows (lists of them) -> dict(input_ids, labels,
    attention_mask (all (B, L)), pixel_values, image_grid_thw, n_skipped, skipped {reason: n});
    None when every sample was skipped (None or SFTDataset's skip marker). attention_mask is 0
    on padding and k on the k-th sample of a row, so the model blocks attention across samples
    and restarts M-RoPE per sample. Images go in row-major token order, the order the model
    consumes them. Right padding for training, left for generation. Each sample starts with an
    unsupervised token, so a shifted loss never predicts one packed sample from the previous one."""
    rows = [b if isinstance(b, list) else [b] for b in batch]
    skipped = Counter((s or {}).get("skip", "unknown") for r in rows for s in r if is_skipped(s))
    rows = [r for r in ([s for s in r if not is_skipped(s)] for r in rows) if r]
    if not rows:
        return None
    width = max(sum(len(s["input_ids"]) for s in r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        n = sum(len(s["input_ids"]) for s in r)
        span = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[b, span] = torch.cat([s["input_ids"] for s in r])
        labels[b, span] = torch.cat([torch.as_tensor(s["labels"]) for s in r])
        mask[b, span] = torch.cat([torch.full((len(s["input_ids"]),), k + 1) for k, s in enumerate(r)])
    samples = [s for r in rows for s in r]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask,
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "image_grid_thw": torch.cat([s["image_grid_thw"] for s in samples]),
            "n_skipped": sum(skipped.values()), "skipped": dict(skipped)}


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Batch sampler (DataLoader(batch_sampler=...)): each epoch (set_epoch) permutes samples with
    `seed + epoch`, sorts chunks of batch_size * group_chunks by length (less padding), cuts
    batches, shuffles them and deals them round-robin to ranks. Every rank gets the same number
    of batches (DDP needs equal steps) and every sample appears once per epoch, batch sizes within
    one of each other; with fewer samples than batches, `self.repeated` samples fill the gap."""

    def __init__(self, lengths, batch_size, seed=0, rank=0, world_size=1, shuffle=True,
                 group_chunks=50):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle, self.group_chunks, self.epoch = shuffle, group_chunks, 0
        n = len(self.lengths)
        if n == 0:
            raise ValueError("no samples to batch")
        self.n_batches = -(-n // (batch_size * world_size)) * world_size  # over all ranks
        self.repeated = max(0, self.n_batches - n)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def plan(self):
        """This rank's batches (lists of sample indices) for the current epoch."""
        rng = np.random.default_rng(self.seed + self.epoch)
        n = len(self.lengths)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        order = np.resize(order, n + self.repeated)  # repeats cyclically when tiny
        chunks = np.split(order, range(0, len(order), self.batch_size * self.group_chunks)[1:])
        order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = np.array_split(order, self.n_batches)
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return [b.tolist() for b in batches[self.rank::self.world_size]]

    def __iter__(self):
        return iter(self.plan())

    def __len__(self):
        return self.n_batches // self.world_size
