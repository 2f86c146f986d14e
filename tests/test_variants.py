"""`lsg.variants`, the one module naming attention variants: what reaches transformers' process-wide interfaces,
that a new entry is selectable at once, and that the kernels import neither it nor each other in a cycle."""

import ast
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from transformers import AutoModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import lsg
import lsg.baselines as baselines
from lsg.attention import lsg_blocked_attention
from lsg.variants import ATTENTION_VARIANTS, TABLE1_PREFIX

PACKAGE = Path(lsg.__file__).parent
# Modules that compute attention: plain functions, unaware of names and of transformers' interfaces.
KERNELS = ("lsg.layout", "lsg.attention", "lsg.fast", "lsg.flex", "lsg.reference", "lsg.invariants",
           "lsg.baselines.attentions", "lsg.baselines.reformer", "lsg.blockwise")


def test_no_generic_baseline_name_enters_the_transformers_interfaces():
    attention, masks = ALL_ATTENTION_FUNCTIONS.valid_keys(), ALL_MASK_ATTENTION_FUNCTIONS.valid_keys()
    for name in baselines.TABLE1_ATTENTIONS:
        assert name not in attention and name not in masks, name
        assert TABLE1_PREFIX + name in attention and TABLE1_PREFIX + name in masks, name
    for name in ATTENTION_VARIANTS:  # every variant, with its mask function (or padding would be dropped)
        assert name.startswith(("lsg", TABLE1_PREFIX)), name
        assert name in attention and name in masks, name


@pytest.mark.parametrize(("name", "params"), [("local", {}), ("linformer", {"projection_dim": 4})])
def test_table1_names_are_accepted_as_attn_implementation(tmp_path, name, params):
    """transformers 5.23 reads "/", "flash", "sdpa" and "paged|" in a name as special: the prefixed names pass."""
    tiny_model("bert", "Model").save_pretrained(tmp_path)
    registered = baselines.attention_name(name, **params)
    model = AutoModel.from_pretrained(tmp_path, attn_implementation=registered)
    assert model.config._attn_implementation == registered
    model.set_attn_implementation("sdpa")
    model.set_attn_implementation(registered)
    assert model.config._attn_implementation == registered


def test_a_newly_registered_variant_is_selectable_at_once():
    calls = []

    def counted_attention(*args, **kwargs):
        calls.append(1)
        return lsg_blocked_attention(*args, **kwargs)

    if "lsg_test_counted" not in ATTENTION_VARIANTS:
        lsg.ATTENTION_VARIANTS.register("lsg_test_counted")(counted_attention)
    model = lsg.convert(tiny_model("bert", "Model"), bos_token_id=0, mask_token_id=4, max_length=64,
                        block_size=8, sparse_block_size=8, sparsity_factor=2)
    ids, outputs = torch.randint(5, 99, (2, 40)), {}
    for name in ("lsg_blocked", "lsg_test_counted"):
        model.set_attn_implementation(name)
        with torch.no_grad():
            outputs[name] = model(input_ids=ids).last_hidden_state
    assert len(calls) == model.config.num_hidden_layers
    torch.testing.assert_close(outputs["lsg_test_counted"], outputs["lsg_blocked"], atol=0, rtol=0)


def _module_imports() -> dict[str, set[str]]:
    """Module-level `lsg` imports of every module of the package (imports inside functions are lazy on purpose)."""
    files = {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
             for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        targets = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files else node.module
                            for alias in node.names}
        graph[module] = {target for target in targets if target in files}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    return seen


def test_package_imports_have_no_cycle():
    graph = _module_imports()
    assert "lsg.fast" in graph["lsg.variants"]  # the graph is read at all
    cycles = sorted(module for module in graph if module in _reachable(graph, module))
    assert not cycles, f"modules importing themselves through others: {cycles}"


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernels_do_not_know_the_registry(kernel):
    reached = _reachable(_module_imports(), kernel)
    assert not reached & {"lsg.variants", "lsg.hf", "lsg"}, reached
