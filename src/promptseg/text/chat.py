"""An LLM's tokenizer as the diffusion pipeline uses it: the prompt inside the chat template, padded to the length the
transformer sees, so that word positions are found among the tokens the transformer actually receives.

    tokens = ChatTokenizer(qwen_tokenizer, max_length=512, template_kwargs={"enable_thinking": False})
    tokens("a cat").input_ids      # "<|im_start|>user\\na cat<|im_end|>\\n<|im_start|>assistant\\n..." as ids

It is the `tokenizer` a backbone with an LLM text encoder exposes (FLUX.2-klein's Qwen3): `tokenizer(text)` gives
the templated ids (the template's tokens play the part CLIP's start and end tokens play: `leading_specials` counts
those before the prompt), `tokenizer(text, add_special_tokens=False)` the prompt's own pieces; everything else is
the wrapped tokenizer's. A byte-level BPE puts a word's leading space inside its first token; `span_positions` reads
a word's tokens in context for that.
"""

from __future__ import annotations


class _TokenizerView:
    """What both views share: the wrapped tokenizer's length and attributes, and the text states' length as
    `model_max_length`."""

    _own = ("tokenizer", "max_length")

    def __len__(self) -> int:
        return len(self.tokenizer)

    @property
    def model_max_length(self) -> int:
        return self.max_length

    def __getattr__(self, name):
        if name.startswith("__") or name in self._own:  # copy / pickle before __init__
            raise AttributeError(name)
        return getattr(self.tokenizer, name)


class ChatTokenizer(_TokenizerView):
    """A view of `tokenizer` that wraps every text in its chat template as one user message.

    Args:
        tokenizer: a `transformers` tokenizer with a chat template.
        max_length (`int`): the padded length the text encoder runs with (`model_max_length`).
        template_kwargs (`dict`, *optional*): extra arguments of `apply_chat_template` (Qwen3: `enable_thinking`).

    Raises:
        ValueError: the tokenizer has no chat template, or pads on the left (positions are read from the left).
    """

    def __init__(self, tokenizer, max_length: int, template_kwargs: dict | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{type(tokenizer).__name__} has no chat template; the model's tokenizer folder must "
                             "carry the one its pipeline applies (tokenizer_config.json or chat_template.jinja)")
        if getattr(tokenizer, "padding_side", "right") != "right":
            raise ValueError(f"the tokenizer pads on the {tokenizer.padding_side}; promptseg reads word positions "
                             "from the left: set padding_side='right' in its tokenizer_config.json")
        self.tokenizer, self.max_length = tokenizer, int(max_length)
        self.template_kwargs = dict(template_kwargs or {})

    def template(self, text: str) -> str:
        """`text` as the pipeline's chat template renders it (a string, not yet tokenized)."""
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True, **self.template_kwargs)

    def __call__(self, text, add_special_tokens: bool = True, **kwargs):
        if add_special_tokens:
            text = [self.template(t) for t in text] if isinstance(text, (list, tuple)) else self.template(text)
        return self.tokenizer(text, add_special_tokens=add_special_tokens, **kwargs)


class PrefixTemplateTokenizer(_TokenizerView):
    """A view of an LLM's tokenizer for a pipeline that fills a fixed template string and drops its first tokens
    (Qwen-Image: a system message and the user turn's opening, 34 tokens of Qwen's vocabulary): `tokenizer(text)`
    gives the ids the transformer sees (the template's tail after the prompt kept), `tokenizer(text,
    add_special_tokens=False)` the prompt's own pieces.

    Args:
        tokenizer: the LLM's tokenizer.
        template (`str`): the template, `{}` where the prompt goes.
        max_length (`int`): the text states' length (`model_max_length`).
    """

    def __init__(self, tokenizer, template: str, max_length: int):
        if template.count("{}") != 1:
            raise ValueError(f"the prompt template must hold '{{}}' once, got {template!r}")
        self.tokenizer, self.template, self.max_length = tokenizer, template, int(max_length)
        self.drop = len(tokenizer(template.split("{}")[0], add_special_tokens=False).input_ids)

    def __call__(self, text, add_special_tokens: bool = True, **kwargs):
        if not add_special_tokens:
            return self.tokenizer(text, add_special_tokens=False, **kwargs)
        many = isinstance(text, (list, tuple))
        encoded = self.tokenizer([self.template.format(t) for t in (text if many else [text])], **kwargs)
        encoded["input_ids"] = [row[self.drop:] for row in encoded["input_ids"]]
        if "attention_mask" in encoded:
            encoded["attention_mask"] = [row[self.drop:] for row in encoded["attention_mask"]]
        if not many:
            encoded["input_ids"] = encoded["input_ids"][0]
            if "attention_mask" in encoded:
                encoded["attention_mask"] = encoded["attention_mask"][0]
        return encoded
