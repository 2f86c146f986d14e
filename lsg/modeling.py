"""LSG config and model classes for every supported family, registered with the Auto API.

For each family (`lsg.families.FAMILIES`) this module builds:

* a config class `LSG<Name>Config` with `model_type = "lsg_<type>"` carrying the LSG fields under
  the authors' names, defaulting `attn_implementation` to "lsg" (transformers never saves it);
* one subclass per head class, `LSG<Name><Head>`, whose `__init__` builds the original model and
  then `install_lsg` adds the global table and hooks. State-dict keys are unchanged.

After `import lsg`, `AutoModel*.from_pretrained(dir)` on a converted directory returns these classes.
The classes are generated rather than written out because they differ only by their base class.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import transformers
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

import lsg.reference  # noqa: F401  (registers the "lsg_reference" variant before the interfaces are built)
from lsg.families import AUTO_CLASS_OF_SUFFIX, FAMILIES, Family, family_of
from lsg.hf import install_lsg, register_attention_variants
from lsg.settings import LSGSettings

LSG_MARKER = "lsg"  # `base_model_prefix` value the authors' converter stores to mark LSG checkpoints


def _lsg_config_class(family: Family) -> type[PretrainedConfig]:
    source = family.config_class
    annotations: dict[str, Any] = {f.name: f.type for f in fields(LSGSettings)}
    defaults: dict[str, Any] = {f.name: f.default for f in fields(LSGSettings)}
    annotations["base_model_prefix"] = "str"
    defaults["base_model_prefix"] = LSG_MARKER

    def __post_init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("attn_implementation", "lsg")
        source.__post_init__(self, **kwargs)
        LSGSettings.from_object(self)  # validate now, not at the first forward

    namespace = {
        "__module__": __name__,
        "__qualname__": f"LSG{source.__name__}",
        "__doc__": f"{source.__name__} plus the LSG attention fields of `lsg.LSGSettings`.",
        "model_type": family.lsg_model_type,
        "__annotations__": annotations,
        "__post_init__": __post_init__,
        **defaults,
    }
    return strict(type(f"LSG{source.__name__}", (source,), namespace))


def _lsg_model_class(family: Family, suffix: str, config_class: type[PretrainedConfig]) -> type[PreTrainedModel]:
    source = family.head_class(suffix)

    def __init__(self, config: PretrainedConfig, *args: Any, **kwargs: Any) -> None:
        source.__init__(self, config, *args, **kwargs)
        install_lsg(self)
        self.post_init()  # initialises the new global table on freshly built models

    name = f"LSG{source.__name__}"
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"{source.__name__} with LSG attention (see `lsg.convert`).",
        "config_class": config_class,
        "__init__": __init__,
    }
    return type(name, (source,), namespace)


CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {}
MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {}


def _register_family(family: Family) -> None:
    config_class = _lsg_config_class(family)
    CONFIG_CLASSES[family.model_type] = config_class
    globals()[config_class.__name__] = config_class
    AutoConfig.register(family.lsg_model_type, config_class, exist_ok=True)
    for suffix in family.heads:
        model_class = _lsg_model_class(family, suffix, config_class)
        MODEL_CLASSES[model_class.__name__] = model_class
        globals()[model_class.__name__] = model_class  # importable by name, so pickling works
        getattr(transformers, AUTO_CLASS_OF_SUFFIX[suffix]).register(config_class, model_class, exist_ok=True)


register_attention_variants()
for _family in FAMILIES.values():
    _register_family(_family)


def lsg_model_class(family: Family, suffix: str) -> type[PreTrainedModel]:
    """The LSG class of a head, e.g. (BERT, "ForMaskedLM") -> LSGBertForMaskedLM."""
    return MODEL_CLASSES[f"LSG{family.name}{suffix}"]


def load(path: str | Path, *, architecture: str | None = None, **kwargs: Any) -> PreTrainedModel:
    """Load a converted LSG checkpoint (a directory or hub id saved by `lsg.convert`).

    Args:
        path: the saved directory or hub id.
        architecture: head class to build instead of the saved one, e.g. "BertForSequenceClassification".
        **kwargs: passed to `from_pretrained` (dtype, attn_implementation="lsg_reference", num_labels, ...).
    """
    config = AutoConfig.from_pretrained(path)
    if not config.model_type.startswith("lsg_"):
        raise ValueError(
            f"{path} holds a {config.model_type!r} checkpoint, not an LSG one; convert it with lsg.convert first"
        )
    family = family_of(config)
    name = architecture or (config.architectures or [f"{family.name}Model"])[0]
    suffix = family.suffix_of(name)
    if suffix is None:
        raise ValueError(f"architecture={name!r} is not an LSG {family.name} head; heads: {list(family.heads)}")
    return lsg_model_class(family, suffix).from_pretrained(path, **kwargs)
