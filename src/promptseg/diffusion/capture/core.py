"""The one attention-capture core: ``with capture(unet, layers, store):``.

Recording layers get a `RecordingProcessor`, which runs diffusers' own `AttnProcessor` (so the attention maths
is diffusers', never a hand copy) and reads the probabilities it computes through `Attention.get_attention_scores`.
Every other layer keeps the processor it had (the fast SDPA path). On exit, even after an exception, the
original processors are put back. A UNet under capture refuses a second capture.

Self-attention on a large grid (`AttentionStore.wants_lazy`) is not recorded as probabilities: the layer runs
diffusers' SDPA processor (`AttnProcessor2_0`) and its query and key are read from forward hooks on the layer's
own `to_q` / `to_k` (head-split, `norm_q` / `norm_k` applied as the processor applies them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from promptseg.diffusion.capture.store import AttentionStore
from promptseg.models.attention_layers import AttentionLayer

_ACTIVE_FLAG = "_promptseg_capture_active"


class StopForward(Exception):
    """Raised inside the UNet once every recorded layer has run, when the capture was asked to stop early."""


class RecordingProcessor:
    """An attention processor that computes attention like diffusers' `AttnProcessor` and records it.

    Args:
        store (`AttentionStore`): where the maps go.
        kind (`str`): "self" or "cross".
        on_recorded (`callable`, *optional*): called after each recording (used for early stopping).
    """

    def __init__(self, store: AttentionStore, kind: str, on_recorded=None):
        self.store = store
        self.kind = kind
        self.on_recorded = on_recorded
        self._stock = AttnProcessor()
        self._fast = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        stock_scores = attn.get_attention_scores
        store, kind = self.store, self.kind
        seq_len = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[-2] * hidden_states.shape[-1]
        if store.wants_lazy(kind, seq_len) and attention_mask is None:
            out = self._lazy_call(attn, hidden_states, encoder_hidden_states, temb)
            if self.on_recorded is not None:
                self.on_recorded()
            return out

        def scores_and_record(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None):
            probs = stock_scores(query, key, mask)  # (B * heads, N, K)
            store.add(kind, probs, attn.heads)
            if kind == "cross" and store.keep_queries:
                store.add_query(attn, query)
            return probs

        # Shadow the bound method on this instance for the duration of the stock call only.
        attn.get_attention_scores = scores_and_record
        try:
            out = self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        finally:
            del attn.get_attention_scores
        if self.on_recorded is not None:
            self.on_recorded()
        return out

    def _lazy_call(self, attn, hidden_states, encoder_hidden_states, temb):
        """Run the SDPA processor and keep this call's head-split query and key in the store."""
        seen = {}
        hooks = [attn.to_q.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
                 attn.to_k.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o))]
        try:
            out = self._fast(attn, hidden_states, encoder_hidden_states, None, temb)
        finally:
            for hook in hooks:
                hook.remove()
        q, k = (seen[n].unflatten(-1, (attn.heads, -1)).transpose(1, 2) for n in ("q", "k"))  # (B, heads, N, d)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        self.store.add_self_qk(q.flatten(0, 1).contiguous(), k.flatten(0, 1).contiguous(), attn.heads, attn.scale)
        return out


@contextmanager
def capture(
    unet: torch.nn.Module,
    layers: Sequence[AttentionLayer],
    store: AttentionStore,
    *,
    stop_after_last: bool = False,
) -> Iterator[AttentionStore]:
    """Record attention of `layers` into `store` for every UNet forward inside the block.

    Args:
        unet: a diffusers `UNet2DConditionModel` (anything with `attn_processors` / `set_attn_processor`).
        layers (`Sequence[AttentionLayer]`): the layers to record (see `select_layers`); the rest keep their
            processors.
        store (`AttentionStore`): receives the maps.
        stop_after_last (`bool`, defaults to `False`): raise `StopForward` inside a forward as soon as every
            recorded layer has run once, so the rest of the UNet (and its backward pass) is skipped. Call the UNet
            through `run_until_captured` then.

    Raises:
        RuntimeError: the UNet is already under capture.
        ValueError: no layers were given, or a layer name is not in the UNet.
    """
    if getattr(unet, _ACTIVE_FLAG, False):
        raise RuntimeError("this UNet is already under capture(); leave the first `with capture(...)` block first")
    if not layers:
        raise ValueError("capture() needs at least one layer; see promptseg.diffusion.capture.select_layers")
    modules = _attention_modules(unet)
    unknown = [layer.name for layer in layers if layer.name not in modules]
    if unknown:
        raise ValueError(f"layers not in this UNet: {unknown}")

    seen = {"n": 0}
    n_layers = len(layers)

    def count_and_stop() -> None:
        seen["n"] += 1
        if seen["n"] == n_layers:
            seen["n"] = 0
            raise StopForward()

    hook = count_and_stop if stop_after_last else None
    # Only the recorded layers' processors are swapped (diffusers' per-module `set_processor`); the rest are
    # never touched, so they keep whatever they had (SDPA by default).
    originals = {layer.name: modules[layer.name].processor for layer in layers}
    setattr(unet, _ACTIVE_FLAG, True)
    try:
        for layer in layers:
            modules[layer.name].set_processor(RecordingProcessor(store, layer.kind, hook))
        yield store
    finally:
        for name, processor in originals.items():
            modules[name].set_processor(processor)
        setattr(unet, _ACTIVE_FLAG, False)


def _attention_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Attention modules by processor name (the keys of `unet.attn_processors`), found once per UNet."""
    cached = getattr(unet, "_promptseg_attention_modules", None)
    if cached is None:
        cached = {f"{name}.processor": m for name, m in unet.named_modules() if hasattr(m, "set_processor")}
        unet._promptseg_attention_modules = cached
    return cached


def run_until_captured(unet: torch.nn.Module, *args, **kwargs) -> None:
    """Call `unet(*args, **kwargs)` under a `capture(..., stop_after_last=True)`, ending at the last recorded layer."""
    try:
        unet(*args, **kwargs)
    except StopForward:
        return
    raise RuntimeError("the UNet finished without reaching every recorded layer; was stop_after_last set?")
