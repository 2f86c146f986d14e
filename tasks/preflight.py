"""Every check of a run that needs no weights, before anything heavy loads (`python run.py` calls `validate`).

A bad value must stop the run in seconds, with one line naming the parameter (or the file and line), the
value and what is accepted, not after the weights load or the training ends. Three layers, cheapest first:

1. the schema's `__post_init__` checks (`tasks/config.py`: ranges, choices, combinations), run by
   `to_run_config`;
2. the hardware (`trainer.device=cuda` on a machine without CUDA) and the checkpoint's *config* (a few KB
   read, never the weights): the path exists and holds a complete save, `model.max_length` is not below
   what the checkpoint already reads, `trainer.freeze_layers` does not exceed its layers;
3. the data files of `task.data.path` (`tasks/data_checks.py`): every row of every split parsed and
   checked, labels included.

Each raises `ConfigError`; `run.py` prints it as one line and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.config import ConfigError, RunConfig, to_run_config


def validate(cfg: Any) -> RunConfig:
    """The composed Hydra config as a `RunConfig`, after every check that needs no weights.

    `offline=true` takes effect here (`lsg.hub.go_offline`), before the checkpoint's config is read.

    Raises:
        ConfigError: the first problem found.
    """
    run_cfg = to_run_config(cfg)
    if run_cfg.offline:
        from lsg.hub import go_offline

        go_offline()
    check_run(run_cfg)
    return run_cfg


def check_run(cfg: RunConfig) -> None:
    """Layers 2 and 3 of the module docstring for an already validated `RunConfig`.

    Raises:
        ConfigError: the first problem found.
    """
    from tasks.hardware import resolve

    try:
        resolve(cfg.trainer.device, cfg.trainer.precision)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_checkpoint(cfg)
    data = cfg.task.data
    if data.path:
        from tasks.data_checks import check_data_files

        check_data_files(cfg.task)
    elif data.builder:
        _check_builder(data.builder, data.builder_args)


def check_checkpoint(cfg: RunConfig) -> None:
    """model.checkpoint / model.tokenizer exist and can be read; lengths and layers fit its config."""
    from lsg.hub import is_local_path
    from lsg.modeling import check_complete_save

    model = cfg.model
    for parameter, source in (("model.checkpoint", model.checkpoint), ("model.tokenizer", model.tokenizer)):
        if source and is_local_path(source) and not Path(source).expanduser().exists():
            raise ConfigError(f"{parameter}={source!r} does not exist; give a local directory or a hub id")
    if is_local_path(model.checkpoint):
        try:
            check_complete_save(model.checkpoint)
        except ValueError as error:
            raise ConfigError(f"model.checkpoint: {error}") from None
    config = _read_config(model.checkpoint)
    if config.model_type == "encoder-decoder":  # a saved bert2bert: its encoder is what reads the long input
        config = config.encoder
    if config.model_type.startswith("lsg_"):  # a converted checkpoint: its saved LSG settings and length are used
        return
    _check_lengths(cfg, config)
    layers = getattr(config, "num_hidden_layers", None)
    if cfg.trainer.freeze_layers and layers is not None and cfg.trainer.freeze_layers > layers:
        raise ConfigError(f"trainer.freeze_layers={cfg.trainer.freeze_layers} is out of range: it must be <= {layers}, "
                          f"the encoder layers of {model.checkpoint}")


def _read_config(checkpoint: str) -> Any:
    from transformers import AutoConfig

    from lsg.hub import offline_hint

    try:
        return AutoConfig.from_pretrained(checkpoint, trust_remote_code=False)
    except (OSError, ValueError) as error:
        cause = offline_hint() or " ".join(str(error).split())[:200]
        raise ConfigError(f"model.checkpoint={checkpoint!r} cannot be read ({cause}); point it at a local "
                          "directory, e.g. model.checkpoint=${lsg_asset:minilm}") from None


def _check_lengths(cfg: RunConfig, config: Any) -> None:
    """model.max_length against what the checkpoint reads: LSG extends it, the original attention cannot."""
    import lsg
    from lsg.convert import check_source
    from tasks.models import check_original_length

    model = cfg.model
    try:
        if model.attention == "original":
            check_original_length(model, config)
        elif model.attention == "lsg":
            check_source(config, model.max_length)
        else:  # longformer / bigbird conversions are built from a supported encoder
            lsg.families.family_of(config)
    except ValueError as error:
        message = str(error)
        raise ConfigError(message if message.startswith("model.") else
                          f"model.{message}" if message.startswith("max_length") else
                          f"model.checkpoint={model.checkpoint!r}: {message}") from None


def _check_builder(name: str, arguments: dict[str, Any]) -> None:
    """task.data.builder is registered and takes task.data.builder_args."""
    import inspect

    from tasks.data import DATA_BUILDERS

    if name not in DATA_BUILDERS:
        raise ConfigError(f"task.data.builder={name!r} is not supported; use one of {sorted(DATA_BUILDERS)}")
    try:
        inspect.signature(DATA_BUILDERS.get(name)).bind(**arguments)
    except TypeError as error:
        raise ConfigError(f"task.data.builder_args={dict(arguments)} do not fit builder {name!r}: {error}") from None
