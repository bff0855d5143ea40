"""File names inside a checkpoint folder, shared by the loader, the fetcher and the tiny writer.

Kept free of heavy imports so that `libra-node model fetch` starts (and fails) fast.
"""

CONFIG = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
# A checkpoint's tokenizer: one of these (fast tokenizers file, sentencepiece model).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# Optional stage-1 connector weights (keys model.mm_projector.*), a torch pickle.
STAGE_ONE_CONNECTOR = "mm_tac_projector.bin"
# RAD-DINO's own folder inside the checkpoint folder.
VISION_FOLDER = "rad-dino"
# Written by `libra-node model fetch`: which hub repositories and revisions the folder holds.
FETCH_RECORD = "libra-node-fetch.json"
