"""The diffusion core every method, filter and refiner builds on (none of them imports another's module).

    encode.py     an image resized and VAE-encoded once (`prepare_pixels`), shared by every stage of a pipeline
                  run (`shared_encoding`)
    noise.py      seeded noising, the noise a denoiser's output implies, one-step DDIM inversion
    attention.py  which attention a method reads ({fraction: weight} -> grids and layers) and one captured pass
    capture/      recording attention through diffusers' processors (store, lazy self-attention)
    readout.py    attention read-out maths: resolution mixing, self-attention refinement, normalisation, resizing
    evidence.py   denoising evidence: where a phrase helps the denoiser predict the image's noise
"""
