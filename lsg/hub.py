"""Sharing converted models: the model card every save writes, the upload to the Hub, and offline diagnostics.

A converted checkpoint is an ordinary transformers directory whose `model_type` is `lsg_<type>`. Transformers
knows that type only after `import lsg` (it has no plugin discovery), so the card's first job is to say so.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData
from transformers import PreTrainedModel

from lsg.families import AUTO_CLASS_OF_SUFFIX, family_of
from lsg.settings import LSGSettings

DISTRIBUTION = "lsg-attention"  # the PyPI name; the import name is `lsg`
# Hub task of a head class suffix (pipeline_tag metadata): what pipeline() the checkpoint serves.
PIPELINE_TAGS = {
    "Model": "feature-extraction",
    "ForMaskedLM": "fill-mask",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForConditionalGeneration": "summarization",
}
HUB_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # the ones that block model and tokenizer downloads
DATASET_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")  # datasets reads HF_DATASETS_OFFLINE first
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")  # all of them: offline=true
_CARD = """---
{card_data}
---

# {name}

`{architecture}`: {base} with **LSG attention** (Local + Sparse + Global, Condevaux & Harispe 2023), converted
to read up to **{max_length} tokens**. Its weights are the source model's; only the position table was extended
and {num_global_tokens} global token(s) added. Fine-tune it before relying on its outputs.

## Load it

The model type `{model_type}` is defined by the `{distribution}` package, not by transformers itself:

```bash
pip install {distribution}
```

```python
import lsg  # registers the lsg_* model types with transformers' Auto classes
from transformers import {auto_class}, AutoTokenizer, pipeline

model = {auto_class}.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
{pipeline_line}
```

Without `import lsg`, transformers fails with "model type `{model_type}` ... does not recognize this
architecture": install the package and import it first. Inputs longer than {max_length} tokens need
`truncation=True`.

## LSG settings

| setting | value |
|---|---|
{settings}
"""


def is_local_path(name: str | Path) -> bool:
    """Whether a model name means a local path rather than a hub id: it exists, or it is spelled like a path
    (absolute, `./`, `../`, `~`, a drive letter). A missing path must fail as such, not as a hub lookup."""
    text = str(name)
    return (Path(text).expanduser().exists() or text.startswith(("/", "./", "../", "~", "\\"))
            or (len(text) > 2 and text[1] == ":" and text[2] in "/\\"))


def go_offline() -> None:
    """Never contact the hub again in this process: models, tokenizers and datasets load from local files only.

    Sets OFFLINE_VARIABLES for child processes, and the flags huggingface_hub and datasets already derived from
    them: both read the variables once, at import, and importing lsg imports them, so the variables alone would
    change nothing here (every load would still retry the network for ~25 s before failing).
    """
    import sys

    import huggingface_hub.constants

    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:  # imported later, it reads the variables itself
        datasets_config = sys.modules["datasets"].config
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True


def offline_hint(variables: tuple[str, ...] = HUB_VARIABLES) -> str:
    """A sentence naming the offline variables that are set (and so blocked a download), or "" if none is.

    Args:
        variables: environment variables to check, in the order the failing library reads them.
    """
    blocking = [name for name in variables if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}]
    if not blocking:
        return ""
    listed = ", ".join(f"{name}={os.environ[name]}" for name in blocking)
    return f"offline mode is on ({listed}): unset {' and '.join(blocking)} to download, or use a local copy"


def _head_suffix(model: PreTrainedModel) -> str:
    """"ForMaskedLM" for LSGRobertaForMaskedLM; "Model" for a base model or an unknown head."""
    return family_of(model.config).suffix_of(type(model).__name__) or "Model"


def _base_model(model: PreTrainedModel) -> str | None:
    """The source checkpoint's hub id, if the model came from the hub (a local path says nothing to readers)."""
    source = str(getattr(model, "name_or_path", "") or "")
    return source if source and not Path(source).exists() and source.count("/") <= 1 else None


def model_card(model: PreTrainedModel, repo: str | None = None) -> ModelCard:
    """The card (README.md) of a converted model: what it is, its LSG settings, how to load it.

    Args:
        model: a converted LSG model (its config carries the `lsg.LSGSettings` fields).
        repo: the hub id the card's snippets load from; default the directory the model is saved in.
    """
    config = model.config
    settings = LSGSettings.from_object(config)
    base = _base_model(model)
    suffix = _head_suffix(model)
    tag = PIPELINE_TAGS.get(suffix)
    max_length = family_of(config).original_length(config)
    data = ModelCardData(library_name=DISTRIBUTION, base_model=base, pipeline_tag=tag,
                         tags=["lsg", "long-context", "transformers", config.model_type])
    name = repo.rsplit("/", 1)[-1] if repo else type(model).__name__
    fields: dict[str, Any] = {"max_length": max_length, **asdict(settings)}
    return ModelCard(_CARD.format(
        card_data=data.to_yaml(), name=name, architecture=type(model).__name__, model_type=config.model_type,
        base=f"[{base}](https://huggingface.co/{base})" if base else "a pretrained checkpoint",
        max_length=max_length, auto_class=AUTO_CLASS_OF_SUFFIX.get(suffix, "AutoModel"),
        num_global_tokens=settings.num_global_tokens,
        distribution=DISTRIBUTION, repo=repo or "path/to/this/directory",
        pipeline_line=f'pipe = pipeline("{tag}", model=model, tokenizer=tokenizer)' if tag else "",
        settings="\n".join(f"| `{key}` | {value} |" for key, value in fields.items()),
    ))


def write_model_card(model: PreTrainedModel, directory: str | Path, repo: str | None = None) -> Path:
    """Write `model_card(model, repo)` as `directory/README.md`; returns its path."""
    path = Path(directory) / "README.md"
    model_card(model, repo).save(path)
    return path


def push_folder(directory: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                api: HfApi | None = None) -> str:
    """Upload a saved model directory (weights, tokenizer, README.md) to the Hub in one commit.

    Args:
        directory: what `python -m lsg.convert --out` (or `save_pretrained`) wrote.
        repo_id: "user/name" or "org/name"; created if missing.
        private: create the repo private (an existing repo keeps its visibility).
        token: Hub token; None = the usual lookup (HF_TOKEN, then the `hf auth login` file).
        api: the HfApi to use (tests pass a recording one).
    Returns:
        the URL of the commit.
    """
    api = api or HfApi()
    api.create_repo(repo_id, private=private, token=token, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(directory), token=token,
                               commit_message="Upload an LSG-converted model")
    return str(getattr(commit, "commit_url", commit))


__all__ = ["DISTRIBUTION", "model_card", "offline_hint", "push_folder", "write_model_card"]
