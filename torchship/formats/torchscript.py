"""TorchScript: one traced, frozen method per sequence bucket, in one file, weights stored once.

``forward`` is the longest bucket, so the seed's ``torch.jit.load(path)(*inputs)`` works; bucket ``S``
is also reachable as method ``seq_S``. Freezing folds the weights into constants shared by every
method, so K buckets cost one copy of the weights on disk and in memory.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import Backend, ExportJob, Format, Target, register

if TYPE_CHECKING:
    from ..artifact import FormatEntry, Manifest

FILE = "model.pt"
log = logging.getLogger(__name__)


def method_name(seq: int) -> str:
    return f"seq_{seq}"


def load_module(path: Path, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load``, without its deprecation notice: keeping TorchScript loadable is the point."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=DeprecationWarning)
        module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    module.eval()
    return module  # type: ignore[no-any-return]


@register
class TorchScript(Format):
    name = "torchscript"
    file = FILE
    triton_platform = "pytorch_libtorch"
    static = True

    def export(self, job: ExportJob) -> list[warnings.WarningMessage]:
        """Trace the wrapper once per bucket, freeze, save; return the warnings seen."""
        wrapper, examples = job.wrapper, job.examples
        longest = max(examples)
        for seq in examples:
            setattr(wrapper, method_name(seq), wrapper.forward)
        inputs = {"forward": examples[longest], **{method_name(seq): x for seq, x in examples.items()}}
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with torch.no_grad():
                traced = torch.jit.trace_module(wrapper.eval(), inputs, check_trace=False)  # type: ignore[no-untyped-call]
            frozen = torch.jit.freeze(traced.eval(), preserved_attrs=[method_name(seq) for seq in examples])
            torch.jit.save(frozen, str(job.out / FILE))
        for seq in examples:
            delattr(wrapper, method_name(seq))
        return list(seen)

    def entries(self, job: ExportJob) -> list[FormatEntry]:
        entries = super().entries(job)
        for entry in entries:
            entry.method = method_name(entry.seq or 0)
        return entries

    def load(self, root: Path, manifest: Manifest, target: Target) -> Backend:
        """Load ``model.pt`` onto the target device; bucket ``S`` runs through method ``seq_S``."""
        seqs = sorted(int(e.seq or 0) for e in manifest.formats[self.name])
        if torch.device(target.device).type == "cpu":
            # TorchScript's profiling executor keeps a specialized graph per input shape it has seen. On CPU that
            # bought no speed here and cost memory: a corpus job peaked at 1.45-1.83 GB with it (varying run to
            # run) and at 0.85-0.88 GB without, at equal rows/s (benchmarks: README, "Memory of a long job").
            # The switch is process-wide, like torch.set_num_threads.
            torch._C._jit_set_profiling_executor(False)
        module = load_module(root / FILE, target.device)
        methods = {seq: getattr(module, method_name(seq)) for seq in seqs}
        if torch.device(target.device).type == "cpu":
            from ..machine import bound_onednn_cache, onednn_linear_pays

            bound_onednn_cache()
            graphs = [m.graph for m in [*methods.values(), module.forward]]
            shape = _largest_linear(graphs)
            if shape is not None:
                pays, why = onednn_linear_pays(*shape, torch.get_num_threads())
                if pays:
                    prepack_linears(graphs)
                log.info("torchship: %s: linear layers %s: %s", root, "on oneDNN" if pays else "as traced", why)

        def run(seq: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return tuple(methods[seq](*inputs))

        return Backend(self.name, max(seqs), seqs, run)


def _float32_linears(graphs: list[torch._C.Graph]) -> list[tuple[torch._C.Graph, torch._C.Node, torch.Tensor]]:
    """Each ``aten::linear`` whose weight is a float32 matrix folded into the graph (a frozen module's)."""
    found: list[tuple[torch._C.Graph, torch._C.Node, torch.Tensor]] = []
    for graph in graphs:
        for node in graph.nodes():
            if node.kind() != "aten::linear":
                continue
            weight = list(node.inputs())[1]
            if weight.node().kind() != "prim::Constant":
                continue
            value = weight.toIValue()
            if isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.dim() == 2:
                found.append((graph, node, value))
    return found


def _largest_linear(graphs: list[torch._C.Graph]) -> tuple[int, int] | None:
    """(out, in) features of the largest float32 linear layer in ``graphs``, or None when there is none."""
    shapes = [tuple(w.shape) for _, _, w in _float32_linears(graphs)]
    return max(shapes, key=lambda s: s[0] * s[1]) if shapes else None  # type: ignore[return-value]


def prepack_linears(graphs: list[torch._C.Graph]) -> int:
    """Run the float32 linear layers of ``graphs`` (a loaded module's methods, before their first call) on
    oneDNN's prepacked kernels: ``aten::linear(x, W, b)`` -> ``mkldnn::_linear_pointwise(x, pack(W), b)``, each
    weight packed once and shared by every method that holds it. The file is not touched: ``model.pt`` stays
    plain TorchScript for libtorch, Triton and any device. Returns the number of weights packed."""
    packed: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    for graph, node, weight in _float32_linears(graphs):
        key = (weight.data_ptr(), tuple(weight.shape))
        if key not in packed:
            packed[key] = torch.ops.mkldnn._reorder_linear_weight(weight)
        x, _, bias = node.inputs()
        with graph.insert_point_guard(node):
            scalars = graph.insertNode(graph.create("prim::ListConstruct", [], 1)).output()
            scalars.setType(torch._C.ListType(torch._C.OptionalType(torch._C.NumberType.get())))
            inputs = [x, _constant(graph, packed[key]), bias, _constant(graph, "none"), scalars, _constant(graph, "")]
            linear = graph.insertNode(graph.create("mkldnn::_linear_pointwise", inputs, 1))
        linear.output().setType(node.output().type())
        node.output().replaceAllUsesWith(linear.output())
        node.destroy()
    for graph in graphs:
        torch._C._jit_pass_dce(graph)  # the float32 weights' constants, now unused
    return len(packed)


def _constant(graph: torch._C.Graph, value: torch.Tensor | str) -> torch._C.Value:
    """A ``prim::Constant`` holding ``value``, inserted at the graph's insertion point."""
    node = graph.insertNode(graph.create("prim::Constant", [], 1))
    if isinstance(value, str):
        node.s_("value", value)
        node.output().setType(torch._C.StringType.get())
    else:
        node.t_("value", value)
        node.output().inferTypeFrom(value)
    return node.output()
