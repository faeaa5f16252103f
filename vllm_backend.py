"""vLLM backend for evaluate.py and curate.py (`--backend vllm`): the offline `LLM` API behind the
same small interface as evaluate.NativeBackend. vLLM's engine API changes often (V0 removed,
`task=` deprecated), so every vLLM call of the project lives in this one file, and nothing imports
it unless that backend is chosen. Needs `pip install -r requirements-vllm.txt` and a GPU.

Any vision-language model vLLM runs can be evaluated (the paper's Table 1 compares with
InternVL3-8B): requests go through `LLM.chat`, so vLLM renders each one with the evaluated model's
own chat template and writes that model's own image placeholder. A template that takes content
parts (Qwen2-VL, Qwen2.5-VL, the LLaVA family) gets the images as parts, in place; one that takes
a string gets vLLM's placeholder for the model in front of the text ('<image>' for InternVL,
'<|image_1|>' for Phi-3.5-vision, '(<image>./</image>)' for MiniCPM-V). Our prompts write
'<image>' where each image goes; that marker never reaches the model.

    python evaluate.py run --model CKPT --benchmark vqa_rad --data-root DATA/vqa_rad --backend vllm
"""
import re

from image_processor import open_image


def chat_messages(messages, images):
    """Our messages (the user text marks each image with '<image>') -> the conversation
    `LLM.chat` takes: with images, a message that marks them gets content parts, each image an
    "image_pil" part where its marker stood (the part type vLLM added in 0.9.2 for in-memory
    images; a newline right after the marker goes with it, as data.render_chat drops it); any
    other message keeps its string, and so does every message of a request without images (a
    judge reading an answer that happens to write '<image>').
    '<image>What?' + [im] -> [{"type": "image_pil", "image_pil": im}, {"type": "text", "text": "What?"}]."""
    images, out = list(images), []
    if not images:
        return [dict(m) for m in messages]
    for m in messages:
        pieces = re.split(r"<image>\n?", m["content"])
        if len(pieces) == 1:
            out.append(dict(m))
            continue
        if len(pieces) - 1 > len(images):
            raise ValueError(f"a {m['role']} message marks {len(pieces) - 1} images, the request has "
                             f"{len(images)} left")
        parts = []
        for k, piece in enumerate(pieces):
            if k:
                parts.append({"type": "image_pil", "image_pil": images.pop(0)})
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({**m, "content": parts})
    if images:
        raise ValueError(f"the request has {len(images)} images that no '<image>' marks")
    return out


class VLLMBackend:
    """Requests go through LLM.chat (the model's chat template and image placeholder, see the module
    docstring); the pixel budget is passed to vLLM's image processor (a processor that takes no
    min/max_pixels, as InternVL's tiling, keeps its own; vLLM drops them with a warning).
    gpu_memory_utilization, when given, is the part of the GPU this engine may take
    (evaluate.make_backends splits it between engines); otherwise vLLM's default."""

    def __init__(self, model_dir, dtype="bfloat16", batch_size=None, min_pixels=None, max_pixels=262144,
                 max_model_len=8192, max_images=8, tensor_parallel_size=1, seed=0, gpu_memory_utilization=None):
        try:
            import vllm
        except ImportError as e:
            raise RuntimeError("the vllm backend needs a GPU machine with `pip install -r "
                               "requirements-vllm.txt`; use --backend native otherwise") from e
        if tuple(int(x) for x in re.findall(r"\d+", vllm.__version__)[:3]) < (0, 9, 2):
            raise RuntimeError(f"vllm {vllm.__version__} is too old for the vllm backend (it passes images to "
                               "LLM.chat, which takes them from 0.9.2): pip install -r requirements-vllm.txt")
        engine = dict(model=model_dir, dtype=dtype or "bfloat16", max_model_len=max_model_len,
                      tensor_parallel_size=tensor_parallel_size, seed=seed, trust_remote_code=True)
        if gpu_memory_utilization:
            engine["gpu_memory_utilization"] = gpu_memory_utilization
        mm = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        try:
            self.llm = vllm.LLM(**engine, limit_mm_per_prompt={"image": max_images}, mm_processor_kwargs=mm)
        except ValueError as e:  # a text-only model (a judge): vLLM 0.9 refuses image settings for it
            if "only supported for multimodal models" not in str(e):
                raise
            self.llm = vllm.LLM(**engine)
        self.timings = {}

    def _chat(self, requests, params, add_generation_prompt=True):
        conversations = [chat_messages(r["messages"], [open_image(im) for im in r.get("images") or []])
                         for r in requests]
        return self.llm.chat(conversations, params, use_tqdm=False, add_generation_prompt=add_generation_prompt)

    def generate(self, requests, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=None, n=1, stop=None):
        """n evaluate.Completion texts per request (finish 'length' when max_new_tokens cut it)."""
        from vllm import SamplingParams
        from evaluate import Completion
        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, n=n, seed=seed,
                                stop=stop, include_stop_str_in_output=bool(stop))
        return [[Completion(c.text, "length" if c.finish_reason == "length" else "stop") for c in o.outputs]
                for o in self._chat(requests, params)]

    def prompt_logprobs(self, requests):
        """Per request {'token_ids', 'logprobs'}: the log-prob of each token of the rendered
        conversation, no generation prompt (the first is None)."""
        from vllm import SamplingParams
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        res = []
        for o in self._chat(requests, params, add_generation_prompt=False):
            ids = list(o.prompt_token_ids)
            lps = [None if d is None else d[t].logprob for t, d in zip(ids, o.prompt_logprobs)]
            res.append({"token_ids": ids, "logprobs": lps})
        return res
