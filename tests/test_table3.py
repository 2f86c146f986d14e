"""Table 3 (tasks/table3.py): parameter counts from the architecture configs kept in the repository, offline."""

from tasks import table3


def test_lsg_bart_base_counts_the_papers_145m():
    table = table3.paper_table()
    ours = next(row for row in table["rows"] if not row["cited"])
    count = table3.count(ours, table["architectures"])
    # BART-base (139,420,416) + encoder and decoder positions grown to 4098 rows + 512 global embeddings
    assert count == 139_420_416 + 2 * (4098 - 1026) * 768 + 512 * 768
    assert round(count / 1e6) == ours["paper"] == 145


def test_the_markdown_marks_cited_rows_and_compares_ours():
    text = table3.markdown([{"label": "LED", "ours": None, "paper_millions": 460, "cited": True},
                            {"label": "x", "ours": 144_532_224, "paper_millions": 145, "cited": False},
                            {"label": "y", "ours": 150_000_000, "paper_millions": 145, "cited": False}])
    assert "| LED | cited | 460M |  |" in text
    assert "| x | 144.5M (144,532,224) | 145M | yes |" in text and "| y | 150.0M (150,000,000) | 145M | NO |" in text
