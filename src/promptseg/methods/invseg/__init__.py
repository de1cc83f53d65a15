"""InvSeg (Lin et al., AAAI 2025): test-time prompt inversion with Contrastive Soft Clustering.

    method.py   the registered method `invseg` and its settings (`InvSegConfig`)
    losses.py   Contrastive Soft Clustering, entropy minimisation, the symmetric KL between views
    augment.py  the augmented views: random crops, resizing, and putting a view's maps back in place
"""

from promptseg.methods.invseg.method import InvSeg, InvSegConfig

__all__ = ["InvSeg", "InvSegConfig"]
