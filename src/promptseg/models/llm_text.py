"""What the backbones with an LLM text encoder share (FLUX.2-klein and Z-Image: Qwen3 inside its chat template): the
tokenizer view, the prompt length and the encoder run with its attention mask.

    class Flux2Backbone(ChatTextEncoder, FluxBackbone):
        template_kwargs = {"enable_thinking": False}        # how the family's pipeline renders the template
"""

from __future__ import annotations

import torch

from promptseg.models.base import run_text_encoder


class ChatTextEncoder:
    """A mixin for a `DiTBackbone` whose `text_encoders[0]` is an LLM and `tokenizers[0]` its tokenizer with a chat
    template; the text states are the family's own choice of hidden states (`encode_text`). The conditioning has no
    pooled vector: `split_text` and `context_of` return the states as they are."""

    template_kwargs: dict = {}
    """Extra arguments of `apply_chat_template` the family's pipeline passes."""
    default_sample_size: int = 128
    """The latent side at the native size, unless the model's `"sample_size"` setting says otherwise."""

    @property
    def native_latent_size(self) -> tuple[int, int]:
        size = int(self.method_defaults.get("sample_size", self.default_sample_size))
        return (size, size)

    @property
    def tokenizer(self):
        """The LLM's tokenizer inside its chat template (`promptseg.text.ChatTokenizer`), at `text_length`."""
        view = self.__dict__.get("_chat_view")
        if view is None or view.max_length != self.text_length:
            from promptseg.text.chat import ChatTokenizer

            view = ChatTokenizer(self.tokenizers[0], self.text_length, self.template_kwargs)
            self.__dict__["_chat_view"] = view
        return view

    @property
    def text_encoder(self) -> torch.nn.Module:
        """The LLM, whose input embeddings `encode_text(token_embeds=...)` replaces."""
        return self.text_encoders[0]

    @property
    def text_length(self) -> int:
        """Tokens the LLM runs with, the template's and the padding included: the model's `"max_sequence_length"`
        setting, else 512 (both pipelines' default)."""
        return int(self.method_defaults.get("max_sequence_length", 512))

    @property
    def t5_length(self) -> int:
        return self.text_length

    def run_llm(self, prompts, token_embeds=None, **kwargs):
        """(the LLM's output with every hidden state, the attention mask (B, L) bool) of `prompts` in the template,
        padded to `text_length`.

        Raises:
            ValueError: a prompt longer than `text_length` tokens in its template.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        length = self.text_length
        encoded = self.tokenizer(list(prompts), padding="max_length", max_length=length, truncation=False)
        too_long = [p for p, row in zip(prompts, encoded.input_ids) if len(row) > length]
        if too_long:
            raise ValueError(f"prompt(s) longer than the {length} tokens the text encoder runs with: {too_long}")
        ids = torch.tensor(encoded.input_ids, device=self.device)
        mask = torch.tensor(encoded.attention_mask, device=self.device).bool()
        return run_text_encoder(self.text_encoder, ids, token_embeds, attention_mask=mask, **kwargs), mask

    @staticmethod
    def caption_lengths(text: torch.Tensor) -> list[int]:
        """Each prompt's kept tokens in a family whose `encode_text` zeroes the rows past them: the rows up to its
        last non-zero one."""
        filled = text.detach().abs().amax(dim=-1) > 0
        positions = torch.arange(1, text.shape[1] + 1, device=text.device)
        return [max(int((row * positions).max()), 1) for row in filled]

    def split_text(self, text: torch.Tensor) -> tuple[torch.Tensor, None]:
        return text, None

    def context_of(self, text: torch.Tensor) -> torch.Tensor:
        return text


def load_llm_folder(source: str, local_only: bool, dtype: torch.dtype, denoiser_kwargs: dict | None = None) -> dict:
    """The components of a diffusers folder or hub id of a family with one LLM text encoder (FLUX.2-klein, Z-Image,
    Qwen-Image): transformer, VAE, scheduler, the LLM and its tokenizer."""
    from promptseg.models.mmdit import folder_parts

    _, part = folder_parts(source, local_only, dtype, denoiser_kwargs)
    return {"transformer": part("transformer"), "vae": part("vae"), "scheduler": part("scheduler"),
            "text_encoders": [part("text_encoder")], "tokenizers": [part("tokenizer")]}
