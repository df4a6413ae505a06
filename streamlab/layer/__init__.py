"""The decode layer as a DAG of kernels over named tensors."""

from streamlab.layer.build import DENSE_ONLY, build_layer, expected_active_experts
from streamlab.layer.dag import DTYPE_BYTES, Layer, Node, TensorSpec, Variant, View

__all__ = ["DENSE_ONLY", "DTYPE_BYTES", "Layer", "Node", "TensorSpec", "Variant", "View", "build_layer",
           "expected_active_experts"]
