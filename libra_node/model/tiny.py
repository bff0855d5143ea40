"""A tiny, untrained Libra checkpoint for tests and the demo.

Same layout as the released checkpoints (config.json, model.safetensors,
tokenizer files, preprocessor_config.json, and a rad-dino folder) so that it
goes through exactly the loader the real weights use, but a few MB in size
and fast on a CPU. The weights are random: the text it writes is meaningless,
and config.json says so (``untrained_demo_model``).

The tokenizer is trained here from a small embedded radiology corpus: a
sentencepiece BPE model for the 7B layout (Llama-2 style, slow tokenizer
file), a byte-level BPE with the Llama-3 header tokens for the 3B layout.
The output head only scores whole words and punctuation, so the gibberish
is made of real radiology words rather than word pieces.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from libra_node.model.configuration_libra import LibraConfig, rad_dino_config
from libra_node.model.image_processing import IMAGE_SIZE, PREPROCESSOR_CONFIG
from libra_node.model.layout import SAFETENSORS_SINGLE, VISION_FOLDER
from libra_node.model.loading import quiet_progress_bars
from libra_node.model.modeling_libra import LibraLlamaForCausalLM
from libra_node.model.prompting import (
    DEFAULT_QUERY,
    LIBRA_LLAMA_3,
    LIBRA_SYSTEM,
    LIBRA_V1,
    LLAVA_SYSTEM,
)

VARIANTS = ("7b", "3b")

# Sentences in the style of chest radiograph findings, written for this file.
RADIOLOGY_CORPUS = """
The lungs are clear without focal consolidation, pleural effusion or pneumothorax.
Heart size is normal and the mediastinal contours are unremarkable.
The cardiomediastinal silhouette is within normal limits.
There is a small left pleural effusion with adjacent basilar atelectasis.
A moderate right pleural effusion has increased compared to the prior radiograph.
Bibasilar opacities likely reflect atelectasis, although pneumonia is not excluded.
There is mild pulmonary vascular congestion without frank interstitial edema.
The right lower lobe opacity has improved since the previous study.
No acute cardiopulmonary process.
Stable mild cardiomegaly.
The endotracheal tube terminates five centimeters above the carina.
A nasogastric tube courses below the diaphragm with the tip in the stomach.
The right internal jugular central venous catheter ends in the superior vena cava.
Median sternotomy wires and mediastinal clips are intact.
There is no evidence of free air beneath the diaphragm.
The osseous structures are intact without acute fracture.
Degenerative changes are seen in the thoracic spine.
Hilar contours are normal and there is no lymphadenopathy.
Patchy opacity in the left upper lobe may represent infection in the appropriate clinical setting.
Interval resolution of the previously seen right middle lobe consolidation.
Left lower lobe collapse is new compared with the earlier examination.
Small bilateral effusions are unchanged.
The aorta is tortuous and calcified.
Hyperinflated lungs suggest chronic obstructive pulmonary disease.
A calcified granuloma is noted in the right upper lung.
There is a nodular density projecting over the left mid lung.
Linear scarring is present at the lung bases.
Costophrenic angles are sharp.
The trachea is midline.
No pneumothorax is identified after removal of the chest tube.
A small apical pneumothorax on the right is slightly smaller.
Diffuse reticular markings are consistent with fibrosis.
Increased interstitial markings may represent mild edema.
The pacemaker leads terminate in the right atrium and right ventricle.
Surgical clips project over the upper abdomen.
Lung volumes are low, which accentuates the bronchovascular markings.
Frontal and lateral views of the chest were obtained.
Single portable view of the chest.
Compared to the prior study, there is no significant change.
Findings are worse, with new airspace opacity in the left lower lobe.
Subsegmental atelectasis is present at the right base.
There is blunting of the left costophrenic angle.
Elevation of the right hemidiaphragm is chronic.
The heart is enlarged and there is moderate pulmonary edema.
The mediastinum is not widened.
Mild thickening of the minor fissure.
Streaky opacities at the bases are most likely atelectasis.
A rounded opacity overlying the right hilum warrants further evaluation with chest CT.
Recommend follow up radiograph after treatment.
Indication: shortness of breath, cough, fever, chest pain, trauma, evaluation for pneumonia.
History: hypertension, heart failure, cancer, smoking, recent surgery, dyspnea.
Comparison: prior chest radiograph. Technique: PA view, AP view, lateral view.
"""

# Sizes kept small so that a CPU generates a token in a few milliseconds.
TINY_TEXT_SIZE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
TINY_VISION_SIZE = {"hidden_size": 32, "num_attention_heads": 2, "mlp_ratio": 2}
# Wider than Llama's 0.02: at that scale a 2-layer model barely mixes its
# inputs, and texts for different images and contexts would come out the same.
TINY_INIT_RANGE = 0.3
WORD_LOGIT_SCALE = 0.5

# Llama-3 control tokens the libra_llama_3 template uses.
LLAMA_3_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)


def training_text() -> list[str]:
    """Corpus lines plus the template texts, so that prompts tokenise into known pieces."""
    lines = [line for line in RADIOLOGY_CORPUS.strip().splitlines() if line]
    return lines + [
        LIBRA_SYSTEM,
        LLAVA_SYSTEM,
        DEFAULT_QUERY,
        "USER: ASSISTANT: Following clinical context:",
    ]


def corpus_words() -> set[str]:
    """The words the untrained model may write: those of the radiology corpus."""
    return {word.lower() for word in re.findall(r"[A-Za-z]+", RADIOLOGY_CORPUS)}


def write_tiny_checkpoint(directory: str | Path, variant: str = "7b", seed: int = 0) -> Path:
    """Write an untrained demo checkpoint laid out like libra-v1.0-<variant>.

    ``variant`` picks the layout: "7b" (libra_v1 template, sentencepiece
    tokenizer) or "3b" (libra_llama_3 template, byte-level BPE tokenizer).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if variant == "7b":
        _write_sentencepiece_tokenizer(directory)
    else:
        _write_llama_3_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)

    config = _tiny_config(variant, tokenizer)
    vision_config = rad_dino_config(**TINY_VISION_SIZE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LibraLlamaForCausalLM(config, vision_config).eval()
        _score_whole_words_only(model, tokenizer, seed)

    config.save_pretrained(directory)
    weights = {
        name: tensor.contiguous()
        for name, tensor in model.state_dict().items()
        if not name.startswith("model.vision_tower.")
    }
    save_file(weights, str(directory / SAFETENSORS_SINGLE), metadata={"format": "pt"})

    vision_dir = directory / VISION_FOLDER
    with quiet_progress_bars():
        # transformers writes RAD-DINO's own (original) key names.
        model.model.vision_tower.vision_tower.save_pretrained(vision_dir)
    for folder in (directory, vision_dir):
        (folder / PREPROCESSOR_CONFIG).write_text(
            json.dumps(rad_dino_processor_config(), indent=2) + "\n"
        )
    return directory


def rad_dino_processor_config() -> dict[str, Any]:
    """RAD-DINO's image processor settings (BitImageProcessor, 518 px, bicubic)."""
    return {
        "image_processor_type": "BitImageProcessor",
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5307, 0.5307, 0.5307],
        "image_std": [0.2583, 0.2583, 0.2583],
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": IMAGE_SIZE},
    }


def _tiny_config(variant: str, tokenizer: Any) -> LibraConfig:
    template = LIBRA_V1 if variant == "7b" else LIBRA_LLAMA_3
    eos_id = tokenizer.convert_tokens_to_ids(template.stop_string)
    return LibraConfig(
        **TINY_TEXT_SIZE,
        architectures=["LibraLlamaForCausalLM"],
        vocab_size=len(tokenizer),
        num_key_value_heads=4 if variant == "7b" else 2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        initializer_range=TINY_INIT_RANGE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
        mm_hidden_size=TINY_VISION_SIZE["hidden_size"],
        conversation_template=template.name,
        untrained_demo_model=True,
        torch_dtype="float32",
    )


def _score_whole_words_only(model: LibraLlamaForCausalLM, tokenizer: Any, seed: int) -> None:
    """Give the output head random rows for whole words and punctuation, zero rows elsewhere.

    A zero row scores 0 whatever the hidden state, while the largest of a
    few hundred random word scores is far above 0: greedy and beam search
    pick words, and sampling's nucleus holds only words. End-of-sequence is
    zero too, so the demo writes its full length.
    """
    words = corpus_words()
    keep = []
    for token, index in tokenizer.get_vocab().items():
        text = token.replace("\u2581", " ").replace("\u0120", " ")
        if index in tokenizer.all_special_ids:
            continue
        if (text.startswith(" ") and text[1:].lower() in words) or text in (".", ","):
            keep.append(index)
    generator = torch.Generator().manual_seed(seed)
    head = torch.zeros_like(model.lm_head.weight)
    rows = torch.randn(len(keep), head.shape[1], generator=generator) * WORD_LOGIT_SCALE
    head[torch.tensor(sorted(keep))] = rows
    with torch.no_grad():
        model.lm_head.weight.copy_(head)


def _write_sentencepiece_tokenizer(directory: Path) -> None:
    """Llama-2 style: tokenizer.model (BPE, byte fallback) + tokenizer_config.json."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()),
        model_writer=model,
        model_type="bpe",
        vocab_size=1200,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "pad_token": None,
        **special,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _write_llama_3_tokenizer(directory: Path) -> None:
    """Llama-3 style: byte-level BPE in tokenizer.json, BOS added by the post-processor."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=list(LLAMA_3_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in LLAMA_3_SPECIAL_TOKENS]
    )
    bos = LLAMA_3_SPECIAL_TOKENS[0]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token="<|eot_id|>",
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    wrapped.save_pretrained(directory)


__all__ = ["RADIOLOGY_CORPUS", "VARIANTS", "corpus_words", "write_tiny_checkpoint"]
