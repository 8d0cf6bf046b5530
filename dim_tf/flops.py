"""FLOP counts of TensorFlow graphs: the matmul-class work a traced function does.

Counted from the graph's own operations and their static shapes, so a training
step's count includes its backward pass, the prior's gradient penalty and the
critic's score products exactly as they run. Only the operations that dominate
(matrix products and convolutions, forward and backward) are counted, at 2
FLOP per multiply-add; elementwise work is a few percent of a DIM step and
does not run on the matmul units whose peak the benchmark compares against.
"""

from __future__ import annotations

import math

import tensorflow as tf


def _shape(tensor) -> list[int] | None:
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape.as_list()):
        return None
    return shape.as_list()


def _matmul(op) -> int | None:
    a, b = _shape(op.inputs[0]), _shape(op.inputs[1])
    if a is None or b is None:
        return None
    transpose_a = op.get_attr("transpose_a")
    k = a[0] if transpose_a else a[1]
    m = a[1] if transpose_a else a[0]
    n = b[0] if op.get_attr("transpose_b") else b[1]
    return 2 * m * k * n


def _batch_matmul(op) -> int | None:
    a, b = _shape(op.inputs[0]), _shape(op.inputs[1])
    if a is None or b is None:
        return None
    adj_a, adj_b = op.get_attr("adj_x"), op.get_attr("adj_y")
    m, k = (a[-1], a[-2]) if adj_a else (a[-2], a[-1])
    n = b[-2] if adj_b else b[-1]
    batch = math.prod(max(x, y) for x, y in zip(
        [1] * (len(b) - len(a)) + a[:-2], [1] * (len(a) - len(b)) + b[:-2]))
    return 2 * batch * m * k * n


def _conv(op) -> int | None:
    """2 x (output positions) x (kernel volume) for Conv2D and both of its gradients,
    which do the same number of multiply-adds as the forward convolution."""
    if op.type == "Conv2D":
        out, kernel = _shape(op.outputs[0]), _shape(op.inputs[1])
    elif op.type == "Conv2DBackpropInput":  # inputs: input_sizes, filter, out_backprop
        out, kernel = _shape(op.inputs[2]), _shape(op.inputs[1])
    else:  # Conv2DBackpropFilter: input, filter_sizes, out_backprop
        out, kernel = _shape(op.inputs[2]), _shape(op.outputs[0])
    if out is None or kernel is None:
        return None
    height, width, in_channels, out_channels = kernel
    positions = math.prod(out[:-1]) if op.get_attr("data_format") == b"NHWC" else (
        out[0] * math.prod(out[2:]))
    return 2 * positions * height * width * in_channels * out_channels


def _einsum(op) -> int | None:
    equation = op.get_attr("equation").decode()
    inputs, _ = equation.split("->")
    operands = inputs.split(",")
    if len(operands) != 2 or "." in equation:
        return None
    sizes = {}
    for letters, tensor in zip(operands, op.inputs):
        shape = _shape(tensor)
        if shape is None:
            return None
        sizes.update(zip(letters, shape))
    return 2 * math.prod(sizes.values())


_COUNTERS = {
    "MatMul": _matmul,
    "BatchMatMul": _batch_matmul,
    "BatchMatMulV2": _batch_matmul,
    "BatchMatMulV3": _batch_matmul,
    "Conv2D": _conv,
    "Conv2DBackpropInput": _conv,
    "Conv2DBackpropFilter": _conv,
    "Einsum": _einsum,
}


def _live_operations(graph: tf.Graph) -> list:
    """The operations that run: those the outputs or a stateful operation (a variable
    update, say) depend on. Gradients nobody uses, such as the one with respect to
    the input images, are traced but pruned by Grappler before execution."""
    roots = [t.op for t in getattr(graph, "outputs", []) if t is not None]
    roots += [op for op in graph.get_operations() if op.op_def is not None and op.op_def.is_stateful]
    live, stack = set(), list(roots)
    while stack:
        op = stack.pop()
        if op in live:
            continue
        live.add(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return [op for op in graph.get_operations() if op in live]


def graph_flops(graph: tf.Graph) -> dict[str, int]:
    """{op type: FLOP} of the matmul-class operations of `graph` that run, nested
    functions (tf.function calls, control-flow branches) included.

    Raises:
        ValueError: such an operation has a shape unknown at trace time.
    """
    totals: dict[str, int] = {}
    for op in _live_operations(graph):
        counter = _COUNTERS.get(op.type)
        if counter is not None:
            flops = counter(op)
            if flops is None:
                raise ValueError(f"{op.type} op {op.name!r} has a shape unknown at trace time; "
                                 "trace with fully defined input shapes.")
            totals[op.type] = totals.get(op.type, 0) + flops
    for function in getattr(graph, "_functions", {}).values():
        nested = getattr(function, "graph", None)
        if nested is not None and nested is not graph:
            for kind, flops in graph_flops(nested).items():
                totals[kind] = totals.get(kind, 0) + flops
    return totals


def function_flops(function: tf.types.experimental.PolymorphicFunction, *args) -> dict[str, int]:
    """`graph_flops` of `function` traced for `args` (tensors or TensorSpecs)."""
    return graph_flops(function.get_concrete_function(*args).graph)
