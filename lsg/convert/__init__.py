"""Convert a pretrained short-context checkpoint to LSG attention (design §2), in Python or from the shell.

    import lsg
    long_model = lsg.convert(model, tokenizer, max_length=4096, sparsity_type="norm")
    long_model = lsg.convert(model, tokenizer, lsg.LSGSettings(block_size=64), max_length=4096)

    python -m lsg.convert --model bert-base-uncased --out runs/lsg-bert-4096 --max-length 4096

Conversion only does what an attention function cannot: it extends the learned position table by
tiling (design §2.2), adds the global-token table initialised from the original weights (§2.3), and
writes the LSG fields into a config of the family's `lsg_<type>` model type, so `save_pretrained`
round-trips. Every source weight is copied unchanged; the result has the same head class.

The knobs are two dataclasses, each the one definition of its fields: `lsg.LSGSettings` (the attention,
saved in the model's config) and `ConversionSettings` (how the new rows are initialised). `convert` takes
them whole or by the authors' keyword names, and the command-line flags are generated from them.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from lsg.atomic import clear_stale_staging, staged_directory
from lsg.convert.flags import add_flags, from_flags
from lsg.families import FAMILIES, Family, family_of, supported_architectures
from lsg.hub import is_local_path, offline_hint, push_folder, write_model_card
from lsg.modeling import CONFIG_CLASSES, check_complete_save, lsg_model_class
from lsg.plans import layer_plan
from lsg.positions import initial_global_table, tile_positions
from lsg.settings import LSG_MARKER, MAX_GLOBAL_TOKENS, LSGSettings
from lsg.validation import check_bool, check_int

# Longest L accepted: the tiled position table alone is L x hidden floats (3 GB at 2^20 x 768), and the paper
# stops at 16K-32K tokens. A typo like 10**9 would otherwise try to allocate hundreds of GB.
MAX_LENGTH = 2**20
# Config entries that describe the source checkpoint rather than the converted model.
_DROPPED_CONFIG_KEYS = ("model_type", "architectures", "transformers_version", "auto_map", "dtype", "torch_dtype")


@dataclass(frozen=True)
class ConversionSettings:
    """Conversion choices that are not LSG attention parameters: how the new rows start (design §2.3).

    Args:
        random_global_init: global rows >= 1 start from a random word-like vector instead of [MASK].
        global_positional_stride: stride used to pick the position row of each global token.
        use_token_ids: BERT family: add token-type row 0 to the global rows (as the authors' converter).
        pass_global_tokens_to_decoder: encoder-decoders: keep the G global states in the encoder output, where
            cross-attention sees them (design §3.6); ignored by encoder-only families.
        lsg_decoder: encoder-decoders: causal LSG in the decoder's self-attention too, with a key/value prefix
            as its global tokens (design §3.7); ignored by the other families.
        seed: seeds every random draw of the conversion (random_global_init; the CLI's new heads).
    """

    random_global_init: bool = False
    global_positional_stride: int = 64
    use_token_ids: bool = True
    pass_global_tokens_to_decoder: bool = True
    lsg_decoder: bool = False
    seed: int = 123

    def __post_init__(self) -> None:
        check_int("global_positional_stride", self.global_positional_stride, 1)
        check_int("seed", self.seed)
        for name in ("random_global_init", "use_token_ids", "pass_global_tokens_to_decoder"):
            check_bool(name, getattr(self, name))


def _apply_keywords(settings: LSGSettings | None, conversion: ConversionSettings | None,
                    keywords: dict[str, Any]) -> tuple[LSGSettings, ConversionSettings]:
    """`settings` and `conversion` (defaults if None) with the fields named in `keywords` replaced."""
    names = {cls: [f.name for f in fields(cls)] for cls in (LSGSettings, ConversionSettings)}
    unknown = sorted(set(keywords).difference(*names.values()))
    if unknown:
        raise TypeError(f"convert() got unexpected keyword arguments {unknown}; the settings are the fields of "
                        f"LSGSettings {names[LSGSettings]} and of ConversionSettings {names[ConversionSettings]}")
    pick = {cls: {k: v for k, v in keywords.items() if k in names[cls]} for cls in names}
    return (replace(settings or LSGSettings(), **pick[LSGSettings]),
            replace(conversion or ConversionSettings(), **pick[ConversionSettings]))


def _tokenizer_next_to(model: PreTrainedModel) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved beside the model's weights, if any (offline: no hub lookup)."""
    source = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    if not source:
        return None
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return None


def _as_tokenizer(tokenizer: Any) -> PreTrainedTokenizerBase | None:
    """A tokenizer object as is; a hub id or directory loaded (no remote code); anything else refused."""
    if tokenizer is None or isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    if not isinstance(tokenizer, str | Path):
        raise ValueError(f"tokenizer={tokenizer!r} must be a tokenizer, a local directory or a hub id")
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=False)
    except (OSError, ValueError) as error:
        cause = offline_hint() or " ".join(str(error).split())[:200]
        raise ValueError(f"tokenizer={str(tokenizer)!r} could not be loaded ({cause}); pass the tokenizer object, "
                         "its local directory or its hub id") from None


def special_token_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, bos_token_id: int | None,
    mask_token_id: int | None, *, mask_optional: bool = False,
) -> tuple[int, int]:
    """(first-token id, mask id) for the global init: BOS, else CLS, else config.bos_token_id; and MASK (with
    `mask_optional`, as decoder-only vocabularies often have no mask token, the first-token id stands in)."""
    if (bos_token_id is None or mask_token_id is None) and tokenizer is None:
        tokenizer = _tokenizer_next_to(model)
    first = bos_token_id
    if first is None and tokenizer is not None:
        first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    if first is None:
        first = getattr(model.config, "bos_token_id", None)
    mask = mask_token_id if mask_token_id is not None else getattr(tokenizer, "mask_token_id", None)
    if mask is None and mask_optional:
        mask = first
    missing = [name for name, value in (("bos_token_id", first), ("mask_token_id", mask)) if value is None]
    if missing:
        raise ValueError(
            f"cannot initialise the global tokens: {missing} unknown; pass tokenizer=<the model's tokenizer> "
            "or the ids (bos_token_id=..., mask_token_id=...)"
        )
    vocab = model.get_input_embeddings().num_embeddings
    for name, value in (("bos_token_id", first), ("mask_token_id", mask)):
        if not 0 <= value < vocab:
            raise ValueError(f"{name}={value} is outside the vocabulary [0, {vocab})")
    return first, mask


def _head_suffix(model: PreTrainedModel, family: Family) -> str:
    suffix = family.suffix_of(type(model).__name__)
    if suffix is None or type(model) is not family.head_class(suffix):
        raise ValueError(
            f"architecture {type(model).__name__} is not supported; supported head classes: "
            f"{supported_architectures()}"
        )
    return suffix


def check_source(config: PretrainedConfig, max_length: int) -> Family:
    """Everything about a source config that makes conversion impossible, checked before weights are read."""
    family = family_of(config)
    if config.model_type != family.model_type:
        raise ValueError(f"model is already an LSG model ({config.model_type}); convert its source instead")
    if getattr(config, "is_decoder", False):
        raise ValueError("encoders with is_decoder=True are not supported by lsg.convert; use them as encoders "
                         "(is_decoder=False) or convert a decoder-only model (GPT-2, Llama)")
    if family.globals_before_point and getattr(config, "encoder_layerdrop", 0.0) > 0:
        raise ValueError(
            f"encoder_layerdrop={config.encoder_layerdrop} would skip the layer that adds the global tokens; "
            "set it to 0.0 (accepted: 0.0)"
        )
    original_length = family.original_length(config)
    check_int("max_length", max_length, original_length, MAX_LENGTH,
              hint=f"{original_length} is the model's own maximum length, {MAX_LENGTH} (2^20) this library's ceiling")
    return family


def _initial_globals(model: PreTrainedModel, family: Family, first_id: int, mask_id: int,
                     conversion: ConversionSettings) -> torch.Tensor:
    """The full global table (MAX_GLOBAL_TOKENS rows) built from `model`'s current embeddings (design §2.3)."""
    source = model.base_model
    offset = family.position_offset
    positions = (source.get_submodule(family.position_tables[0]).weight.detach()[offset:]
                 if family.position_tables else None)  # rotary: globals get no position term
    type_row = (
        source.embeddings.token_type_embeddings.weight.detach()[0]
        if family.token_type_in_globals and conversion.use_token_ids else None
    )
    # Rows are built as the model embeds a token (D13): the word table times the model's embedding scale.
    words = source.get_submodule(family.word_embeddings).weight.detach() * family.word_scale(model.config)
    return initial_global_table(
        positions=positions, words=words, rows=MAX_GLOBAL_TOKENS, first_token_id=first_id, mask_token_id=mask_id,
        stride=conversion.global_positional_stride, token_type_row=type_row,
        random_init=conversion.random_global_init, seed=conversion.seed,
    )


def convert(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
    settings: LSGSettings | None = None,
    *,
    max_length: int = 4096,
    conversion: ConversionSettings | None = None,
    bos_token_id: int | None = None,
    mask_token_id: int | None = None,
    max_sequence_length: int | None = None,
    layers: Sequence[str] | None = None,
    full_every: int | None = None,
    full_layers: Sequence[int] | None = None,
    **keywords: Any,
) -> PreTrainedModel:
    """Return an LSG copy of `model` (same head class family, same weights, longer positions).

    Args:
        model: a supported transformers model (see `lsg.supported_architectures()`); not modified.
        tokenizer: its tokenizer (or its directory / hub id, loaded), used for the BOS/CLS and MASK ids of the
            global init; if omitted the ids
            come from `bos_token_id`/`mask_token_id`, else from the tokenizer saved at `model.name_or_path`.
            Its `model_max_length` is set to `max_length`, so truncation follows the new limit.
        settings: the LSG attention parameters (default `LSGSettings()`).
        max_length: L, new maximum number of tokens (alias `max_sequence_length`, the authors' name).
        conversion: how the new rows are initialised (default `ConversionSettings()`).
        bos_token_id, mask_token_id: ids for the global init when there is no tokenizer.
        layers, full_every, full_layers: a MASFormer plan, full attention in some layers (`lsg.plans.layer_plan`);
            saved in the config as `layer_attention`. Default: every layer LSG.
        **keywords: any field of `LSGSettings` or `ConversionSettings` under the authors' names
            (block_size=..., sparsity_type=..., seed=...); each replaces that field of `settings`/`conversion`.

    Returns:
        The converted model, in the same train/eval mode, dtype and device as `model`.

    Raises:
        TypeError: a keyword that is no settings field.
        ValueError: a bad setting or an unsupported model, before any weight is copied.
    """
    if max_sequence_length is not None:
        max_length = max_sequence_length
    settings, conversion = _apply_keywords(settings, conversion, keywords)
    tokenizer = _as_tokenizer(tokenizer)
    family = check_source(model.config, max_length)
    suffix = _head_suffix(model, family)
    first_id, mask_id = special_token_ids(model, tokenizer, bos_token_id, mask_token_id,
                                          mask_optional=family.causal_lm)
    plan = layer_plan(len(family.attention_modules(model.base_model)), layers=layers, full_every=full_every,
                      full_layers=full_layers)

    config_dict = {k: v for k, v in model.config.to_dict().items() if k not in _DROPPED_CONFIG_KEYS}
    config_dict.update(settings.to_dict(), max_position_embeddings=max_length + family.saved_position_offset,
                       architectures=[f"LSG{type(model).__name__}"])
    if family.is_encoder_decoder:
        config_dict["pass_global_tokens_to_decoder"] = conversion.pass_global_tokens_to_decoder
        config_dict["lsg_decoder"] = conversion.lsg_decoder
    config_dict["layer_attention"] = plan

    def global_state(converted: PreTrainedModel, prefix: str) -> dict[str, torch.Tensor]:
        state = {}
        if family.causal_lm or conversion.lsg_decoder:  # causal layers: a key/value prefix (design §3.7)
            state.update(global_prefix(model, converted, [first_id] + [mask_id] * (settings.num_global_tokens - 1)))
        if not family.causal_lm:
            state[f"{prefix}{family.global_table_owner}.global_embeddings.weight"] = _initial_globals(
                model, family, first_id, mask_id, conversion)
        return state

    return _rebuild(model, family, suffix, config_dict, max_length, tokenizer, global_state)


def _rebuild(model: PreTrainedModel, family: Family, suffix: str, config_dict: dict[str, Any], max_length: int,
             tokenizer: PreTrainedTokenizerBase | None,
             global_state: Callable[[PreTrainedModel, str], dict[str, torch.Tensor]]) -> PreTrainedModel:
    """The LSG model of `config_dict` holding `model`'s weights, position tables tiled to `max_length` and the
    global entries `global_state(converted, prefix)` (table and/or causal prefix): the one weight transfer of
    `convert` and `extend`."""
    config = CONFIG_CLASSES[family.model_type](**config_dict)
    config.max_position_embeddings = max_length + family.saved_position_offset  # GPT-2's is an alias (n_positions)
    converted = lsg_model_class(family, suffix)._from_config(config, dtype=model.dtype)
    prefix = "" if suffix == "Model" else f"{model.base_model_prefix}."
    source = model.base_model
    state = dict(model.state_dict())
    for path in family.position_tables:
        key = f"{prefix}{path}.weight"
        state[key] = (converted.state_dict()[key] if family.sinusoidal_positions  # a function of L: rebuilt
                      else tile_positions(source.get_submodule(path).weight.detach(), max_length,
                                          family.position_offset))
    state.update(global_state(converted, prefix))
    result = converted.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"weight transfer incomplete: missing {result.missing_keys}, "
                           f"unexpected {result.unexpected_keys}")
    if converted.can_generate():  # keep the source's beams, length penalty, ...
        converted.generation_config = copy.deepcopy(model.generation_config)
    converted.to(model.device)
    converted.train(model.training)
    if tokenizer is not None:
        tokenizer.model_max_length = max_length
    return converted


@torch.no_grad()
def global_prefix(model: PreTrainedModel, converted: PreTrainedModel, token_ids: list[int]) -> dict[str, torch.Tensor]:
    """Initial key/value prefix of every causal LSG layer (decoder-only models, the decoder of an encoder-decoder;
    design §3.7): the keys and values the source model itself gives the tokens `token_ids` (BOS, then the mask id
    or BOS again) at positions 0..G-1, read from its KV cache (an encoder-decoder also reads them as its source).
    State-dict entries of `converted`."""
    training = model.training
    model.eval()  # no dropout in the initial values
    try:
        ids = torch.tensor([token_ids], device=model.device)
        inputs = {"decoder_input_ids": ids} if model.config.is_encoder_decoder else {}
        cache = model.base_model(input_ids=ids, use_cache=True, **inputs).past_key_values
    finally:
        model.train(training)
    cache = getattr(cache, "self_attention_cache", cache)
    state = {}
    for name, module in converted.named_modules():
        if getattr(module, "lsg_global_keys", None) is not None:
            layer = cache.layers[module.lsg_layer_index]
            state[f"{name}.lsg_global_keys"], state[f"{name}.lsg_global_values"] = layer.keys[0], layer.values[0]
    return state


def is_lsg_model(config: PretrainedConfig) -> bool:
    """Whether `config` is an LSG model's (this library's `lsg_<type>`, or the authors' marked config)."""
    architectures = getattr(config, "architectures", None) or []
    return (str(getattr(config, "model_type", "")).startswith("lsg_")
            or getattr(config, "base_model_prefix", None) == LSG_MARKER or any("LSG" in a for a in architectures))


def extend(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    max_length: int | None = None,
    num_global_tokens: int | None = None,
    conversion: ConversionSettings | None = None,
    bos_token_id: int | None = None,
    mask_token_id: int | None = None,
) -> PreTrainedModel:
    """Return a copy of the LSG `model` reading longer inputs and/or more global tokens (the paper's 16K rows).

    What the authors' converter calls `--resize_lsg`: the position tables are tiled to `max_length` by the
    rule of `convert` (a 4096-row table becomes 4 copies at 16384: new[k] = old[k mod 4096]); the global rows
    the model already uses (its `num_global_tokens`, trained or not) are kept, and rows from there up to the
    new count are initialised as `convert` does, from the model's current word and position embeddings.
    Everything else (every LSG setting, every weight) is unchanged, so an input the old model could read gives
    the same outputs when only the length grows (design §2.5).

    Args:
        model: an LSG model (`lsg.convert`'s, or `lsg.load`'s of the authors' checkpoints); not modified.
        tokenizer: as in `convert` (ids of the new global rows; its model_max_length follows max_length).
        max_length: new L, >= the model's (default: unchanged).
        num_global_tokens: new G, >= the model's, <= 512 (default: unchanged).
        conversion: how the new global rows are initialised (default `ConversionSettings()`).
        bos_token_id, mask_token_id: ids for the global init when there is no tokenizer.

    Raises:
        ValueError: `model` is no LSG model, or a value would shrink the model, before any weight is copied.
    """
    config = model.config
    if not is_lsg_model(config):
        raise ValueError(f"model is a {config.model_type!r} model, not an LSG one; use lsg.convert to convert it")
    family = family_of(config)
    suffix = family.suffix_of(type(model).__name__)
    if suffix is None or type(model) is not lsg_model_class(family, suffix):
        raise ValueError(f"{type(model).__name__} is no LSG head class; load the model with lsg.load")
    length = family.original_length(config)
    saved_globals = config.num_global_tokens
    max_length = length if max_length is None else max_length
    num_global_tokens = saved_globals if num_global_tokens is None else num_global_tokens
    check_int("max_length", max_length, length, MAX_LENGTH,
              hint=f"{length} is the model's maximum length; extend only grows")
    check_int("num_global_tokens", num_global_tokens, saved_globals, MAX_GLOBAL_TOKENS,
              hint=f"{saved_globals} global tokens are in use; extend only adds")
    conversion = conversion or ConversionSettings()
    new_globals = num_global_tokens > saved_globals
    if new_globals and (family.causal_lm or getattr(config, "lsg_decoder", False)):
        # A causal layer's globals are a learned key/value prefix of G rows per layer (design §3.7): new rows
        # would need the source model's cache, which an LSG model no longer has.
        raise ValueError(f"num_global_tokens={num_global_tokens}: a causal LSG model keeps its {saved_globals} "
                         "global tokens (its key/value prefix); extend grows max_length only")
    first_id, mask_id = (special_token_ids(model, tokenizer, bos_token_id, mask_token_id) if new_globals
                         else (0, 0))  # unused: no new row is built

    def global_state(converted: PreTrainedModel, prefix: str) -> dict[str, torch.Tensor]:
        if family.causal_lm:  # the prefix is among the copied weights, unchanged
            return {}
        owner = model.base_model.get_submodule(family.global_table_owner)
        table = owner.global_embeddings.weight.detach().clone()
        if new_globals:
            fresh = _initial_globals(model, family, first_id, mask_id, conversion)
            table[saved_globals:] = fresh[saved_globals:]
        return {f"{prefix}{family.global_table_owner}.global_embeddings.weight": table}

    config_dict = {k: v for k, v in config.to_dict().items() if k == "architectures" or k not in _DROPPED_CONFIG_KEYS}
    config_dict.update(max_position_embeddings=max_length + family.saved_position_offset,
                       num_global_tokens=num_global_tokens)
    return _rebuild(model, family, suffix, config_dict, max_length, tokenizer, global_state)


# --- command line ---------------------------------------------------------------------------------------------

def _head_class_for(config: Any, architecture: str | None) -> type[PreTrainedModel]:
    """The head to load: `architecture` if given, else the source config's first supported one, else the default."""
    family = family_of(config)
    if architecture:
        suffix = family.suffix_of(architecture)
        if suffix is None:
            raise ValueError(f"architecture={architecture!r} is not supported; supported: {supported_architectures()}")
        return family.head_class(suffix)
    suffixes = [family.suffix_of(name) for name in config.architectures or []]
    return family.head_class(next((s for s in suffixes if s is not None), family.default_head))

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lsg.convert",
        description="Convert a checkpoint (hub id or local dir) to LSG attention and save it. Given an LSG "
                    "checkpoint, extend it instead (lsg.extend): only --max-length and --num-global-tokens apply, "
                    "both growing the saved values (positions tiled, existing global tokens kept).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--list", action="store_true", help="print the supported architectures and exit")
    p.add_argument("--model", help="hub id or local directory of the source checkpoint")
    p.add_argument("--out", type=Path, help="output directory (model + tokenizer)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    p.add_argument("--architecture", help="head class, e.g. BertForSequenceClassification or ForMaskedLM "
                   "(default: the source config's, else the family default)")
    p.add_argument("--num-labels", type=int, help="number of labels of a new classification head")
    p.add_argument("--max-length", type=int, default=4096, help="new maximum sequence length L")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload --out to this Hub repo (user/name); "
                   "the token comes from HF_TOKEN or `hf auth login`")
    p.add_argument("--private", action="store_true", help="create the --push-to-hub repo private")
    add_flags(p, LSGSettings, "LSG attention (lsg.LSGSettings, saved in the model's config)")
    add_flags(p, ConversionSettings, "conversion (lsg.ConversionSettings)")
    return p


def _print_architectures() -> None:
    """One block per family: its model_type, the position rule, and its head classes (default first)."""
    for family in FAMILIES.values():
        positions = ("rotary (no tiling)" if not family.position_tables
                     else "sinusoidal (rebuilt)" if family.sinusoidal_positions
                     else f"learned, tiled (offset {family.position_offset})")
        kind = ("decoder-only (causal LSG)" if family.causal_lm
                else "encoder-decoder (LSG encoder)" if family.is_encoder_decoder else "encoder")
        heads = sorted(family.heads, key=lambda suffix: suffix != family.default_head)
        print(f"{family.model_type}: {kind}, positions {positions}")
        print("    " + ", ".join(family.name + suffix for suffix in heads))


def _save_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path,
                     repo: str | None = None) -> None:
    """Write into a sibling directory, then swap it in: a crash never leaves a half-written or missing model.

    The model card's snippets load from `repo` when the directory is to be pushed there.
    """
    with staged_directory(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_model_card(model, staging, repo)


def _unwritable(out: Path) -> str:
    """Why the directory `out` could not be created or replaced ("" when it can): the first existing ancestor
    must be a directory this process may write in."""
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file"
    try:  # a real probe: permission bits say nothing of read-only mounts, and root passes every os.access
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.probe.", dir=ancestor))
    except OSError as error:
        return f"cannot create a directory in {ancestor} ({error.strerror})"
    return ""


def main(argv: list[str] | None = None) -> Path | None:
    """Entry point of `python -m lsg.convert`; returns the output directory."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        _print_architectures()
        return None
    if not args.model or not args.out:
        parser.error("--model and --out are required (or --list)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a directory path (--overwrite replaces directories only)")
    clear_stale_staging(args.out)  # a killed earlier save: its staging goes, an old --out renamed aside comes back
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        parser.error(f"--out {args.out} exists and is not empty; pass --overwrite to replace it")
    unwritable = _unwritable(args.out)
    if unwritable:  # checked first: a conversion can take minutes before the save would fail
        parser.error(f"--out {args.out} cannot be written: {unwritable}")
    if is_local_path(args.model):
        try:
            check_complete_save(args.model)
        except ValueError as error:
            parser.error(f"--model {error}")
    if args.private and not args.push_to_hub:
        parser.error("--private applies to --push-to-hub REPO_ID, which is missing")
    if args.num_labels is not None and args.num_labels < 1:
        parser.error(f"--num-labels {args.num_labels} must be >= 1")
    try:  # every check that needs no weights runs before the (possibly multi-GB) load
        settings = from_flags(LSGSettings, args)
        conversion = from_flags(ConversionSettings, args)
        config = AutoConfig.from_pretrained(args.model, trust_remote_code=False)
        if is_lsg_model(config):
            return _extend_checkpoint(parser, args, conversion)
        check_source(config, args.max_length)
        head_class = _head_class_for(config, args.architecture)
    except OSError as error:  # not a local directory, and the hub could not be asked (or has no such repo)
        parser.error(f"cannot read --model {args.model}: {offline_hint() or str(error)[:300]}")
    except ValueError as error:
        parser.error(str(error))
    torch.manual_seed(conversion.seed)  # new heads (e.g. a classifier) get reproducible weights
    extra = {"num_labels": args.num_labels} if args.num_labels else {}
    model = head_class.from_pretrained(args.model, trust_remote_code=False, **extra)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=False)
    converted = convert(model, tokenizer, settings, max_length=args.max_length, conversion=conversion)
    tokenizer.model_max_length = args.max_length
    _save_atomically(converted, tokenizer, args.out, repo=args.push_to_hub)
    print(f"saved {type(converted).__name__} (max_length={args.max_length}, {settings.sparsity_type}) to {args.out}")
    if args.push_to_hub:
        print(f"pushed to {push_folder(args.out, args.push_to_hub, private=args.private)}")
    return args.out


def _extend_checkpoint(parser: argparse.ArgumentParser, args: argparse.Namespace,
                       conversion: ConversionSettings) -> Path:
    """`--model` is already LSG: grow its length and global tokens (an LSG flag left at its default keeps
    the saved value), save beside its tokenizer."""
    from lsg.modeling import load

    model = load(args.model, **({"architecture": args.architecture} if args.architecture else {}))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    globals_given = args.num_global_tokens != parser.get_default("num_global_tokens")
    try:
        extended = extend(model, tokenizer, max_length=args.max_length, conversion=conversion,
                          num_global_tokens=args.num_global_tokens if globals_given else None)
    except ValueError as error:
        parser.error(str(error))
    _save_atomically(extended, tokenizer, args.out, repo=args.push_to_hub)
    print(f"saved {type(extended).__name__} extended to max_length={args.max_length}, "
          f"{extended.config.num_global_tokens} global tokens, to {args.out}")
    if args.push_to_hub:
        print(f"pushed to {push_folder(args.out, args.push_to_hub, private=args.private)}")
    return args.out


def cli() -> None:
    """The `lsg-convert` console script: `main` without its return value (sys.exit would print it, exit code 1)."""
    main()


__all__ = ["ConversionSettings", "cli", "convert", "extend", "is_lsg_model", "main", "special_token_ids"]
