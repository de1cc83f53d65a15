"""DPSeg's trained network (`promptseg.methods.dpseg` is the method that runs it).

    network.py  the fine-tuned CLIP image encoder and the decoder, saved and loaded together (`load_dpseg`)
    decoder.py  the cost-volume-guided decoder
    cost.py     the CLIP cost volumes of text and visual prompts

Its trainer is `promptseg.training.dpseg` (`promptseg train dpseg`).
"""
