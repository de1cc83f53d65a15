"""Segment Anyword (Liu et al., ICML 2025): referring segmentation from free-form sentences with a frozen diffusion
model and a promptable mask model.

For one image and one expression: (1) the expression is the generation condition and only its visual-concept words'
input token embeddings are learnt, with the diffusion model's own denoising loss on the image (`inversion.py`); (2)
each concept word's cross-attention, averaged over timesteps with the learnt embeddings and refined by
self-attention, is read through the shared capture core; (3) the dependency parse (`promptseg.text.language`) binds
modifiers to their head noun, and the bound maps give candidate regions that position, relation, number and presence
filter (`prompts.py`); (4) each kept region's box goes to SAM (`promptseg.models.sam`), and the masks' union is the answer.
Ours, beyond the paper and off by default: candidate regions may be SAM's own object proposals instead of the map's
connected parts (`proposals="sam"`), and regions may be ranked, and no-target expressions answered empty, by the
phrase's denoising evidence (`evidence="denoising"`, `promptseg.diffusion.evidence`); the bundled shapes model recommends both.

    from promptseg import load_backbone
    from promptseg.methods import build_method
    anyword = build_method("anyword", load_backbone("shapes"))    # the shapes model recommends shapes-sam
    result = anyword.refer(anyword.prepare(image), "the red circle left of the square")
    result.mask    # HxW bool, empty when nothing fits

The paper (and its project page) against this code:

| paper | here |
| --- | --- |
| condition = the expression; learn the token embeddings V of its visual-concept words, text encoder and UNet frozen, < 0.1M parameters | `invert_tokens`: the *input* token embeddings of the parse's concept words (textual-inversion style, a hook on the embedding layer), Adam, the denoising loss at random timesteps; steps / lr unstated in our sources: settings |
| averaged cross-attention over the denoising timesteps with the optimised V | `word_maps`: cross-attention at `timesteps`, refined by self-attention (the baseline's read-out), averaged |
| linguistic-guided regularisation: bind and cluster prompts by dependency and syntax | `language.parse_expression` (spaCy; relations split by pattern first) binds adjectives/compounds to the head; a referent's map is the geometric mean of its bound words' maps; regions are its connected parts; position, relation (target and anchor chosen as a pair), number and presence select them |
| prompts -> SAM | each region's box (or peak point) -> `SamPredictor`; union of the masks |
| -- | ours, settings: `condition="words"` (only the concept words as the condition), `lemmatize`, `evidence="denoising"` (rank regions by the phrase's per-pixel denoising gain less a generic word's, written with `evidence_template`; `evidence_threshold` for no-target answers), `proposals="sam"` (the candidates are `SamPredictor.propose`'s whole-object masks, scored by the referent map and the evidence, and a chosen one is the answer as SAM drew it); the shapes model recommends what its val split chose (`benchmarks/referring/results/anyword_val.md`) |

`Anyword.segment(prepared, labels)` does semantic segmentation through referring (each label as a plural referent).
"""

from promptseg.methods.anyword.config import AnywordConfig
from promptseg.methods.anyword.method import Anyword

__all__ = ["Anyword", "AnywordConfig"]
