"""Every training script of the bundled models, and what they share.

    common.py       what they share: resumable state (seeded, atomic), the lr schedule, progress, arguments
    shapes.py       the `shapes` backbone (VAE, UNet, word tokenizer)       python -m promptseg.training.shapes
    scenes.py       the `scenes` backbone (SD's frozen-CLIP text encoder)    python -m promptseg.training.scenes
    shapes_clip.py  scenes_clip.py   the CLIP models of the two worlds
    shapes_sam.py   scenes_sam.py    the SAM models
    dpseg.py        DPSeg's network                                          promptseg train dpseg

A scenes script builds on its shapes twin's recipe through that script's public functions (the VAE phase, the
CLIP processor and loss, the SAM loop). The weights they write, with their cards and settings, are bundled in `zoo/promptseg_models/` (the `promptseg-models` distribution) and listed once in
`promptseg.models.zoo`.
"""
