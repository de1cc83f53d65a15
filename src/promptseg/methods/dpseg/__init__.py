"""DPSeg (CVPR 2025, arXiv 2505.11676): dual-prompt cost volume learning for open-vocabulary segmentation.

The one *trained* method of promptseg: a CLIP image encoder and a cost-volume-guided decoder learn from masks of
some classes and segment any class by its prompts. Files:

    prompts.py  visual prompts drawn by the diffusion backbone and cached on disk; round II's crops
    bank.py     per-class text and visual prompt features from the frozen CLIP
    method.py   the registered method `dpseg` (prepare / segment, two-round inference)
    tiles.py    tiled inference (ours)

and in `promptseg.models.dpseg` (the network, as the other models): `cost.py` (R = Avg(V, T) and the cosine cost
volume), `decoder.py` (the CVGD decoder: hybrid dilated convolutions, self-attention, deconvolution; visual cost
volumes), `network.py` (image encoder + decoder, their config and weights folder, `load_dpseg`); its trainer is
`promptseg.training.dpseg` (`promptseg train dpseg`: shapes, scenes or COCO-Stuff; `accelerate launch` for several
GPUs).

The paper against the code:

| paper | here |
| --- | --- |
| text prompts T from templates, frozen text encoder | `PromptBank.text` (CLIP text tower, frozen) |
| visual prompts V: SD images of the same templates, frozen CLIP image encoder | `VisualPromptCache` + `PromptBank.visual` |
| R = Avg(V + T), cosine with dense image features | `cost.fuse_prompts`, `cost.cost_volume` |
| CVGD: 3 stages of HDC (1/2/4), self-attention, deconvolution | `decoder.CostVolumeDecoder` |
| multi-scale visual cost volumes F_v^j (encoder features vs prompt features of the same depth) | `NetConfig.visual_layers` (3/4, 1/2, 1/4 of a ViT's depth), `DPSegNet.decode` |
| Inference II: crops of round-I regions as new visual prompts | `DPSeg._round_two_prompts`, `prompts.crop_region` |
| pixel BCE, AdamW 2e-4, image encoder + decoder trained | `promptseg.training.dpseg` (encoder lr x0.1, ours) |

Where the paper is silent or its backbone differs (a plain ViT here, ConvNeXt there), ours: the ViT's three
intermediate layers (one 1/8-resolution grid) are upsampled to each stage's size; the decoder's keys and values are
pooled to 16x16 at the 32x32 stage (SegFormer's spatial reduction, for CPU cost); the head sees the image's pixels
(`pixel_guidance`); a prompt image's layer feature is its mean layer-normalised patch token; round II's crop
paints the box outside the region grey (`crop_fill="mask"`; "box" is the paper's plain crop).
"""

from promptseg.methods.dpseg.config import DPSegConfig
from promptseg.methods.dpseg.method import DPSeg

__all__ = ["DPSeg", "DPSegConfig"]
