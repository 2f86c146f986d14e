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

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import transformers
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

import lsg.variants  # noqa: F401  (registers "lsg", the default attn_implementation of the config classes below)
from lsg.families import AUTO_CLASS_OF_SUFFIX, FAMILIES, Family, family_of
from lsg.hf import install_lsg
from lsg.hub import write_model_card
from lsg.settings import LSG_MARKER, LSGSettings


def _lsg_config_class(family: Family) -> type[PretrainedConfig]:
    source = family.config_class
    annotations: dict[str, Any] = {f.name: f.type for f in fields(LSGSettings)}
    defaults: dict[str, Any] = {f.name: f.default for f in fields(LSGSettings)}
    annotations["base_model_prefix"] = "str"
    defaults["base_model_prefix"] = LSG_MARKER
    annotations["layer_attention"] = "list[str] | None"  # a MASFormer plan (`lsg.plans`); None: every layer LSG
    defaults["layer_attention"] = None
    if family.is_encoder_decoder:  # keep the G global states in the encoder output (design §3.6)
        annotations["pass_global_tokens_to_decoder"] = "bool"
        defaults["pass_global_tokens_to_decoder"] = True
        annotations["lsg_decoder"] = "bool"  # causal LSG in the decoder's self-attention (design §3.7)
        defaults["lsg_decoder"] = False

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

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> Any:
        # Every save carries its card: the directory alone does not say that it needs `import lsg`.
        result = source.save_pretrained(self, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_model_card(self, save_directory)
        return result

    name = f"LSG{source.__name__}"
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"{source.__name__} with LSG attention (see `lsg.convert`).",
        "config_class": config_class,
        "__init__": __init__,
        "save_pretrained": save_pretrained,
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


for _family in FAMILIES.values():
    _register_family(_family)


def lsg_model_class(family: Family, suffix: str) -> type[PreTrainedModel]:
    """The LSG class of a head, e.g. (BERT, "ForMaskedLM") -> LSGBertForMaskedLM."""
    return MODEL_CLASSES[f"LSG{family.name}{suffix}"]


# Buffers that older transformers versions saved with the weights; current classes rebuild them.
_LEGACY_BUFFERS = re.compile(r".*embeddings\.(position_ids|token_type_ids)$")


def _is_authors_checkpoint(config: dict[str, Any]) -> bool:
    """The authors' converter keeps the source model_type and marks the config (design §1.1, §1.2)."""
    architectures = config.get("architectures") or []
    return config.get("base_model_prefix") == LSG_MARKER or any("LSG" in name for name in architectures)


# What `save_pretrained` writes, single file or sharded (the index names its shards).
_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)


def _safetensors_complete(file: Path) -> bool:
    """Whether a .safetensors file is whole: its header parses and its last tensor ends at the file's end."""
    try:
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
    except (OSError, ValueError):
        return False
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    return 8 + size + max(ends, default=0) == file.stat().st_size


def check_complete_save(path: str | Path) -> None:
    """Raise unless the local directory `path` holds a complete `save_pretrained` (config + all weights).

    A save cut short (a killed conversion or run, a copy in progress) has a config but missing or truncated
    weights; loading it would fail deep inside transformers, or worse, re-initialise the missing tensors.

    Raises:
        ValueError: naming the directory and what is missing or truncated.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} holds no complete save: config.json is missing")
    present = [name for name in _WEIGHT_FILES if (path / name).is_file()]
    if not present:
        raise ValueError(f"{path} holds no complete save: no weights ({' or '.join(_WEIGHT_FILES[::2])}); "
                         "was it saved by save_pretrained, or interrupted while saving?")
    files = [path / present[0]]
    if present[0].endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(files[0].read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{files[0]} is unreadable ({error}); save the model again") from None
        files = [path / shard for shard in shards]
    for file in files:
        if not file.is_file() or (file.suffix == ".safetensors" and not _safetensors_complete(file)):
            raise ValueError(f"{path} holds no complete save: {file.name} is missing or truncated; "
                             "save (or convert) the model again")


def _read_config(path: str | Path) -> tuple[PretrainedConfig, bool]:
    """(LSG config, whether it comes from the authors' converter) of a checkpoint; ValueError if not LSG.

    The authors' `config.json` keeps the source `model_type` ("roberta", "bart", ...) and an `auto_map` to
    their remote modeling files; it is read as plain JSON and rebuilt as our `lsg_<type>` config, so no
    remote code runs.
    """
    config_dict, _ = PretrainedConfig.get_config_dict(str(path))
    model_type = str(config_dict.get("model_type", ""))
    if model_type.startswith("lsg_"):
        return AutoConfig.from_pretrained(path, trust_remote_code=False), False
    if not _is_authors_checkpoint(config_dict):
        raise ValueError(
            f"{path} holds a {model_type!r} checkpoint, not an LSG one; convert it with lsg.convert first"
        )
    family = family_of(PretrainedConfig(model_type=model_type))
    kept = {k: v for k, v in config_dict.items() if k not in ("model_type", "auto_map", "transformers_version")}
    return CONFIG_CLASSES[family.model_type](**kept), True


def load(path: str | Path, *, architecture: str | None = None, **kwargs: Any) -> PreTrainedModel:
    """Load an LSG checkpoint: a directory or hub id saved by `lsg.convert` or by the authors' converter.

    Checkpoints of the authors' converter (source `model_type` + LSG fields + `auto_map`) load into this
    library's classes without executing their remote code. Their weight names are the layout of design §2.1
    (`<base>.embeddings.global_embeddings.weight`; `model.encoder.global_embeddings.weight` for
    encoder-decoders), which ours share; buffers older transformers saved (`position_ids`) are dropped. Any
    other weight this library does not know, one it needs that the checkpoint lacks, or one of another
    shape is a ValueError naming them, never a silently re-initialised tensor.

    Args:
        path: the saved directory or hub id.
        architecture: head class to build instead of the saved one, e.g. "BertForSequenceClassification".
        **kwargs: passed to `from_pretrained` (dtype, attn_implementation="lsg_reference", num_labels, ...).

    Raises:
        ValueError: `path` is a local directory without a complete save (`check_complete_save`), is not an
            LSG checkpoint, or (authors' checkpoints) its weights do not map onto this library's classes.
    """
    if Path(path).expanduser().exists():
        check_complete_save(path)
    kwargs.setdefault("trust_remote_code", False)  # these classes are local: never run a checkpoint's own code
    config, from_authors = _read_config(path)
    family = family_of(config)
    saved = (config.architectures or [f"{family.name}Model"])[0]
    suffix = family.suffix_of(architecture or saved)
    if suffix is None:
        raise ValueError(f"architecture={architecture or saved!r} is not an LSG {family.name} head; "
                         f"heads: {list(family.heads)}")
    model_class = lsg_model_class(family, suffix)
    if not from_authors:
        return model_class.from_pretrained(path, **kwargs)
    for key in [k for k in kwargs if hasattr(config, k)]:  # config overrides (num_labels, ...)
        setattr(config, key, kwargs.pop(key))
    model, info = model_class.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    # A new head legitimately drops or creates head weights: then only the shared base model is checked.
    same_head = suffix == family.suffix_of(saved)
    checked = (lambda key: True) if same_head else (lambda key: key.startswith(f"{model.base_model_prefix}."))
    problems = {
        "unknown weights": [k for k in info["unexpected_keys"] if checked(k) and not _LEGACY_BUFFERS.fullmatch(k)],
        "missing weights": [k for k in info["missing_keys"] if checked(k)],
        "weights of another shape": [str(k) for k in info["mismatched_keys"]],
    }
    problems = {what: keys for what, keys in problems.items() if keys}
    if problems:
        raise ValueError(f"{path}: this checkpoint of the authors' converter does not map onto "
                         f"{model_class.__name__}: {problems}")
    return model
