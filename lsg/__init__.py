"""lsg: LSG attention (Local + Sparse + Global) for pretrained transformers.

Importing the package registers the attention variants ("lsg", "lsg_fast", "lsg_reference", ...; `lsg.variants`)
with transformers and the `lsg_<type>` model types with the Auto classes (`lsg.modeling`), so converted
checkpoints load with `AutoModel*.from_pretrained` as well as with `lsg.load`.
"""

from lsg.convert import ConversionSettings, convert, extend
from lsg.families import supported_architectures
from lsg.modeling import load
from lsg.selectors import SPARSE_SELECTORS
from lsg.settings import SPARSITY_TYPES, LSGSettings
from lsg.variants import ATTENTION_VARIANTS, describe_kernel, lsg_attention

__version__ = "0.1.0"

__all__ = [
    "ATTENTION_VARIANTS",
    "SPARSE_SELECTORS",
    "SPARSITY_TYPES",
    "ConversionSettings",
    "LSGSettings",
    "convert",
    "describe_kernel",
    "extend",
    "load",
    "lsg_attention",
    "supported_architectures",
]
