"""Segment Anyword (Liu et al., ICML 2025): referring segmentation from free-form sentences with a frozen diffusion
model and a promptable mask model.

For one image and one expression: (1) the expression is the generation condition and only its visual-concept words'
token embeddings are learnt, with the diffusion model's own denoising loss on the image (`inversion.py`); (2) each
concept word's cross-attention, averaged over timesteps with the learnt embeddings and refined by self-attention,
is read through the shared capture core; (3) the dependency parse (`promptseg.language`) binds modifiers to their
head noun, and the bound maps give candidate regions that position, relation, number and presence filter
(`prompts.py`); (4) each kept region's box goes to SAM (`promptseg.sam`), and the masks' union is the answer.

    from promptseg import load_backbone
    from promptseg.methods import build_method
    anyword = build_method("anyword", load_backbone("shapes"))    # the shapes model recommends shapes-sam
    result = anyword.refer(anyword.prepare(image), "the red circle left of the square")
    result.mask    # HxW bool
"""

from promptseg.methods.anyword.config import AnywordConfig
from promptseg.methods.anyword.method import Anyword

__all__ = ["Anyword", "AnywordConfig"]
