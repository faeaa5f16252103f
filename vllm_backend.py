"""vLLM backend for evaluate.py and curate.py (`--backend vllm`): the offline `LLM` API behind the
same small interface as evaluate.NativeBackend. vLLM's engine API changes often (V0 removed,
`task=` deprecated), so every vLLM call of the project lives in this one file, and nothing imports
it unless that backend is chosen. Needs `pip install -r requirements-vllm.txt` and a GPU.

Any vision-language model vLLM runs can be evaluated (the paper's Table 1 compares with
InternVL3-8B): prompts are rendered with the evaluated model's own chat template, from its
processor (or its tokenizer), the way vLLM documents offline multimodal prompts.

    python evaluate.py run --model CKPT --benchmark vqa_rad --data-root DATA/vqa_rad --backend vllm
"""
from image_processor import open_image


def content_parts(text):
    """A user text with '<image>' placeholders -> chat-template content parts, images in place:
    '<image>What?' -> [{"type": "image"}, {"type": "text", "text": "What?"}]."""
    parts = []
    for k, piece in enumerate(text.split("<image>")):
        if k:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def render_with_template(templater, messages, add_generation_prompt=True):
    """The prompt text of `messages` under the model's own chat template (`templater`: its
    processor or tokenizer). A template that renders image content parts (Qwen2-VL, Qwen2.5-VL,
    the LLaVA family) gets them and writes its own placeholder; one that reads the content as a
    string (InternVL's) gets plain strings, '<image>' as written, the placeholder such models
    expect. Which kind a template is shows in what it makes of the parts: an error (it adds the
    content to a string), their Python repr in the text (it prints the content) or the text left
    out (it renders only string content, as Qwen3's does: a text model as the judge)."""
    kw = dict(add_generation_prompt=add_generation_prompt, tokenize=False)
    parts = [{**m, "content": content_parts(m["content"])} for m in messages]
    try:
        text = templater.apply_chat_template(parts, **kw)
        texts = [p["text"] for m in parts for p in m["content"] if p["type"] == "text"]
        if "{'type': " not in text and all(t in text for t in texts):  # it read the parts, text included
            return text
    except Exception:  # TypeError, or jinja2's errors: the template does string operations on the content
        pass
    return templater.apply_chat_template(messages, **kw)


def load_templater(model_dir):
    """The model's processor when it has a chat template, else its tokenizer."""
    from transformers import AutoProcessor, AutoTokenizer
    try:
        proc = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
        if getattr(proc, "chat_template", None):
            return proc
    except Exception:  # models without a processor class (or whose processor needs more packages)
        pass
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)


class VLLMBackend:
    """Prompts are rendered with the evaluated model's chat template (render_with_template); the
    pixel budget is passed to vLLM's image processor."""

    def __init__(self, model_dir, dtype="bfloat16", batch_size=None, min_pixels=None, max_pixels=262144,
                 max_model_len=8192, max_images=8, tensor_parallel_size=1, seed=0):
        try:
            from vllm import LLM
        except ImportError as e:
            raise RuntimeError("the vllm backend needs a GPU machine with `pip install -r "
                               "requirements-vllm.txt`; use --backend native otherwise") from e
        mm = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        self.llm = LLM(model=model_dir, dtype=dtype or "bfloat16", max_model_len=max_model_len,
                       limit_mm_per_prompt={"image": max_images}, mm_processor_kwargs=mm,
                       tensor_parallel_size=tensor_parallel_size, seed=seed, trust_remote_code=True)
        self.templater = load_templater(model_dir)
        self.timings = {}

    def _inputs(self, requests, add_generation_prompt=True):
        out = []
        for r in requests:
            item = {"prompt": render_with_template(self.templater, r["messages"], add_generation_prompt)}
            images = [open_image(im) for im in r.get("images") or []]
            if images:
                item["multi_modal_data"] = {"image": images[0] if len(images) == 1 else images}
            out.append(item)
        return out

    def generate(self, requests, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=None, n=1, stop=None):
        """n evaluate.Completion texts per request (finish 'length' when max_new_tokens cut it)."""
        from vllm import SamplingParams
        from evaluate import Completion
        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, n=n, seed=seed,
                                stop=stop, include_stop_str_in_output=bool(stop))
        outs = self.llm.generate(self._inputs(requests), params, use_tqdm=False)
        return [[Completion(c.text, "length" if c.finish_reason == "length" else "stop") for c in o.outputs]
                for o in outs]

    def prompt_logprobs(self, requests):
        """Per request {'token_ids', 'logprobs'}: the log-prob of each prompt token (first None)."""
        from vllm import SamplingParams
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        res = []
        for o in self.llm.generate(self._inputs(requests, False), params, use_tqdm=False):
            ids = list(o.prompt_token_ids)
            lps = [None if d is None else d[t].logprob for t, d in zip(ids, o.prompt_logprobs)]
            res.append({"token_ids": ids, "logprobs": lps})
        return res
