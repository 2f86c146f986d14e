"""Per-architecture facts LSG needs (spec §2.4): where modules live, position offsets, head classes.

A family is a small table, not a modeling copy: the attention itself runs through transformers'
attention interface, so adding an encoder family means adding one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

import transformers
from torch import nn
from transformers import PretrainedConfig

# Head class suffix -> the Auto class that should resolve it for an LSG config.
AUTO_CLASS_OF_SUFFIX: dict[str, str] = {
    "Model": "AutoModel",
    "ForPreTraining": "AutoModelForPreTraining",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForMultipleChoice": "AutoModelForMultipleChoice",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForNextSentencePrediction": "AutoModelForNextSentencePrediction",
}


@dataclass(frozen=True)
class Family:
    """How LSG plugs into one architecture family.

    Attributes:
        name: transformers class prefix ("Bert", "Roberta").
        model_type: `config.model_type` of the source checkpoints.
        position_offset: special rows in front of the position table (RoBERTa: padding_idx + 1 = 2).
        token_type_in_globals: whether the authors' converter adds token-type row 0 to the global
            table (BERT family yes, RoBERTa family no: spec D14).
        default_head: head built by the CLI when the source config names none (spec §1.2).
        heads: head-class suffixes the family supports.
        layers: dotted path, under the base model, of the list of transformer layers.
        self_attention: dotted path, under a layer, of the module calling the attention interface.
    """

    name: str
    model_type: str
    position_offset: int
    token_type_in_globals: bool
    default_head: str
    heads: tuple[str, ...]
    layers: str = "encoder.layer"
    self_attention: str = "attention.self"
    embeddings: str = "embeddings"
    encoder: str = "encoder"

    @property
    def lsg_model_type(self) -> str:
        return f"lsg_{self.model_type}"

    @property
    def config_class(self) -> type[PretrainedConfig]:
        return getattr(transformers, f"{self.name}Config")

    def head_class(self, suffix: str) -> type[nn.Module]:
        return getattr(transformers, f"{self.name}{suffix}")

    def suffix_of(self, class_name: str) -> str | None:
        """Head suffix named by a class name of this family, with or without the family and LSG prefixes.

        "LSGBertForMaskedLM", "BertForMaskedLM" and "ForMaskedLM" all give "ForMaskedLM"; None if not a head.
        """
        stem = class_name.removeprefix("LSG")
        suffix = stem[len(self.name):] if stem.startswith(self.name) else stem
        return suffix if suffix in self.heads else None

_ENCODER_HEADS = (
    "Model", "ForMaskedLM", "ForSequenceClassification", "ForMultipleChoice",
    "ForTokenClassification", "ForQuestionAnswering",
)

FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("Bert", "bert", position_offset=0, token_type_in_globals=True, default_head="ForPreTraining",
               heads=(*_ENCODER_HEADS, "ForPreTraining", "ForNextSentencePrediction")),
        Family("Roberta", "roberta", position_offset=2, token_type_in_globals=False, default_head="ForMaskedLM",
               heads=_ENCODER_HEADS),
    )
}


def supported_architectures() -> list[str]:
    """Every head class `lsg.convert` accepts, e.g. "BertForMaskedLM"."""
    return [f"{family.name}{suffix}" for family in FAMILIES.values() for suffix in family.heads]


def family_of(config: PretrainedConfig) -> Family:
    """The family of a (source or LSG) config; ValueError listing the supported ones otherwise."""
    model_type = str(getattr(config, "model_type", "")).removeprefix("lsg_")
    if model_type not in FAMILIES:
        raise ValueError(
            f"architecture model_type={config.model_type!r} is not supported by lsg; supported model types: "
            f"{sorted(FAMILIES)} (head classes: {supported_architectures()})"
        )
    return FAMILIES[model_type]

