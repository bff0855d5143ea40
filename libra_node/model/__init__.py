"""Libra in PyTorch and transformers: the model, its inputs and its loading.

Modules, in the order data flows through them:

    image_processing   radiograph -> 518 x 518 grey uint8 (io side, no torch)
                       -> normalised 3-channel array (gpu side)
    prompting          clinical context -> prompt text -> token ids with the image placeholder
    configuration_libra / modeling_libra
                       RAD-DINO + Temporal Alignment Connector + Llama, checkpoint key names
    layout             file names inside a checkpoint folder
    loading            a checkpoint folder (and RAD-DINO's) -> model, tokenizer, normaliser
    presets            decoding settings (clinical, paper, sample)
    inference          LibraGenerator: load once, generate findings in batches
    offline            one study from files (`libra-node report`)
    tiny               a small untrained checkpoint for tests and the demo
    fetch              download the released weights

Import the module you need (``from libra_node.model.inference import
LibraGenerator``); this package imports nothing heavy by itself, so the io
worker can use image_processing without loading torch.
"""
