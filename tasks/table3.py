"""Paper Table 3 (parameter counts), computed offline: `python -m tasks.table3` (`make table3`).

Every counted model is instantiated from an architecture config kept in `tasks/paper/table3.yaml` (the public
config.json values) with random weights (initialisation skipped: only shapes matter), converted with the real
`lsg.convert` where the row is an LSG model, and its parameters counted (buffers such as BART's
`final_logits_bias` are not parameters). The paper's value is printed beside ours; cited rows (other papers'
models) are printed as given. Writes `runs/table3/table.md` and `table.csv`.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import yaml

PAPER_TABLE = Path(__file__).with_name("paper") / "table3.yaml"


def paper_table() -> dict[str, Any]:
    """The project's copy of Table 3 and the architecture configs."""
    return yaml.safe_load(PAPER_TABLE.read_text(encoding="utf-8"))


def count(row: dict[str, Any], architectures: dict[str, dict[str, Any]]) -> int:
    """Parameters of `row`'s model: its architecture (random weights), converted to LSG when `row` has `lsg`."""
    import transformers
    from transformers.initialization import no_init_weights

    import lsg

    spec = dict(architectures[row["architecture"]])
    config = getattr(transformers, spec.pop("class"))(**spec)
    with no_init_weights():
        if row.get("head") == "seq2seq":
            model = transformers.AutoModelForSeq2SeqLM.from_config(config)
        else:
            config.num_labels = 2
            model = transformers.AutoModelForSequenceClassification.from_config(config)
    if "lsg" in row:
        model = lsg.convert(model, None, lsg.LSGSettings(**row["lsg"]), max_length=row["max_length"],
                            bos_token_id=spec.get("bos_token_id"), mask_token_id=spec.get("mask_token_id"))
    return sum(parameter.numel() for parameter in model.parameters())


def rows() -> list[dict[str, Any]]:
    """Table 3's rows (ours counted where the architecture is known) then the Table 2 models."""
    table = paper_table()
    out = []
    for row in table["rows"] + [{**r, "paper": None, "cited": False} for r in table["table2_models"]]:
        ours = count(row, table["architectures"]) if "architecture" in row else None
        out.append({"label": row["label"], "ours": ours, "paper_millions": row["paper"], "cited": row["cited"]})
    return out


def _cell(row: dict[str, Any]) -> tuple[str, str, str]:
    ours = f"{row['ours'] / 1e6:.1f}M ({row['ours']:,})" if row["ours"] is not None else "cited"
    paper = f"{row['paper_millions']}M" if row["paper_millions"] is not None else "not in Table 3"
    match = "" if row["ours"] is None or row["paper_millions"] is None else (
        "yes" if round(row["ours"] / 1e6) == row["paper_millions"] else "NO")
    return ours, paper, match


def markdown(table_rows: list[dict[str, Any]]) -> str:
    """The table as printed by `make table3`: ours, the paper's, equal within rounding to the million."""
    lines = ["Table 3 (parameter counts; ours from architecture configs, random weights, offline)", "",
             "| model | ours | paper | equal (rounded to 1M) |", "| --- | --- | --- | --- |"]
    lines += [f"| {row['label']} | " + " | ".join(_cell(row)) + " |" for row in table_rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m tasks.table3", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / "table3")
    args = parser.parse_args(argv)
    table_rows = rows()
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(table_rows)
    (args.out / "table.md").write_text(text, encoding="utf-8")
    with open(args.out / "table.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "ours", "paper_millions", "cited"])
        writer.writeheader()
        writer.writerows(table_rows)
    print(text)
    print(f"wrote {args.out / 'table.md'} and {args.out / 'table.csv'}")
    return args.out


if __name__ == "__main__":
    main()
