"""ENAS macro search space (Pham et al., 2018): fixed-arc child and shared-weight search network.

Semantics, the official code's bugs and what jaxnets does instead: docs/enas.md.
"""

from jaxnets.models.enas.arc import (
    OP_NAMES,
    PUBLISHED_FINAL_ARC,
    Arc,
    LayerArc,
    arc_length,
    default_arc,
    format_arc,
    parse_arc,
    random_arc,
)
from jaxnets.models.enas.fixed import ENASMacroChild
from jaxnets.models.enas.shared import ENASMacroSearch
from jaxnets.models.registry import Reference, register

# The released final model (scripts/cifar10_macro_final.sh) and the released search (cifar10_macro_search.sh), on
# CIFAR-10. The official code is TensorFlow (no weights to convert); the fixed child's PyTorch twin, written from
# the reference semantics, names its modules after jaxnets' paths.
register("enas_macro", ENASMacroChild, num_layers=24, num_filters=96, num_branches=4, keep_prob=0.5,
         classifier="head/fc", reference=Reference(twin="enas_macro", image_size=32))
register("enas_macro_shared", ENASMacroSearch, num_layers=12, num_filters=36, num_branches=6, keep_prob=0.9,
         classifier="head/fc", reference=Reference(image_size=32))

__all__ = [
    "OP_NAMES",
    "PUBLISHED_FINAL_ARC",
    "Arc",
    "ENASMacroChild",
    "ENASMacroSearch",
    "LayerArc",
    "arc_length",
    "default_arc",
    "format_arc",
    "parse_arc",
    "random_arc",
]
