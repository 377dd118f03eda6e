"""device: process-wide settings that name CUDA: the visible-devices variable and the cudnn / tf32 flags."""
from __future__ import annotations

import libcst as cst

from porter.rules import ProjectRule, literal

from .common import any_code_rule, docs, keyword, runtime_call

VISIBLE = "CUDA_VISIBLE_DEVICES"
ENV_METHODS = frozenset({"get", "setdefault", "pop", "getenv", "putenv", "unsetenv", "getenvb"})


class VisibleDevices(ProjectRule):
    """The name ``"CUDA_VISIBLE_DEVICES"`` used as an environment key -> ``porter_device.visible_devices_env()``."""

    CATALOGUE = (('os.environ["CUDA_VISIBLE_DEVICES"] (set, read, get, setdefault, pop, getenv, in, a dict key)',
                  'os.environ[porter_device.visible_devices_env()]'),)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._keys: set[cst.CSTNode] = set()

    def _mark(self, node) -> None:
        if literal(node) == VISIBLE:
            self._keys.add(node)

    def visit_SubscriptElement(self, node):
        if isinstance(node.slice, cst.Index):
            self._mark(node.slice.value)

    def visit_DictElement(self, node):
        self._mark(node.key)

    def visit_Call(self, node):
        func = node.func
        last = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
        if last in ENV_METHODS and node.args and node.args[0].keyword is None:
            self._mark(node.args[0].value)

    def visit_Comparison(self, node):
        if len(node.comparisons) == 1 and isinstance(node.comparisons[0].operator, (cst.In, cst.NotIn)):
            self._mark(node.left)

    def leave_SimpleString(self, original_node, updated_node):
        if original_node not in self._keys:
            return updated_node
        self.record(original_node, "CUDA_VISIBLE_DEVICES -> porter_device.visible_devices_env()")
        return runtime_call(self, "visible_devices_env")


FLAGS = {"torch.backends.cudnn.benchmark": "benchmark", "torch.backends.cudnn.deterministic": "deterministic",
         "torch.backends.cudnn.allow_tf32": "cudnn_allow_tf32", "torch.backends.cuda.matmul.allow_tf32": "allow_tf32"}


class CudnnFlags(ProjectRule):
    """``torch.backends.cudnn.benchmark = X`` (and deterministic, the tf32 switches) ->
    ``porter_device.set_determinism(benchmark=X)``."""

    CATALOGUE = (("torch.backends.cudnn.benchmark = x", "porter_device.set_determinism(benchmark=x)"),
                 ("torch.backends.cudnn.deterministic = x", "porter_device.set_determinism(deterministic=x)"),
                 ("torch.backends.cuda.matmul.allow_tf32 = x", "porter_device.set_determinism(allow_tf32=x)"),
                 ("torch.backends.cudnn.allow_tf32 = x", "porter_device.set_determinism(cudnn_allow_tf32=x)"))
    PORTS = tuple(FLAGS)

    def leave_Assign(self, original_node, updated_node):
        if len(original_node.targets) != 1:
            return updated_node
        flag = FLAGS.get(self.qualified_name(original_node.targets[0].target) or "")
        if flag is None:
            return updated_node
        self.record(original_node, f"{flag} flag -> porter_device.set_determinism({flag}=...)")
        return cst.Expr(runtime_call(self, "set_determinism", [keyword(flag, updated_node.value)]),
                        semicolon=updated_node.semicolon)


VISIBLE_DEVICES = any_code_rule(
    id="torch.device.visible-devices",
    summary="CUDA_VISIBLE_DEVICES becomes the selected device's variable", rewrite=VisibleDevices,
    triggers=(VISIBLE,),
    docs=docs(why="A program that sets os.environ['CUDA_VISIBLE_DEVICES'] to pick its devices picks nothing on an "
                  "NPU, which reads ASCEND_RT_VISIBLE_DEVICES; one that reads it counts no devices there.",
              how="The key becomes porter_device.visible_devices_env(): ASCEND_RT_VISIBLE_DEVICES on an NPU, "
                  "CUDA_VISIBLE_DEVICES on CUDA and on the CPU (where nothing reads it). Only where the string is an "
                  "environment key: a subscript, a dict key, the first argument of get / setdefault / pop / getenv / "
                  "putenv / unsetenv, the left of `in`. A keyword (env.update(CUDA_VISIBLE_DEVICES=...)) or a shell "
                  "command line is left alone.",
              upstream="Ascend documents ASCEND_RT_VISIBLE_DEVICES as the NPU's CUDA_VISIBLE_DEVICES; transfer_to_npu "
                       "leaves the variable to the user."))

CUDNN_FLAGS = any_code_rule(
    id="torch.device.cudnn-flags",
    summary="cudnn / tf32 switches set through the device layer", rewrite=CudnnFlags,
    triggers=("benchmark", "deterministic", "allow_tf32"), requires=("cudnn", "cuda"),  # torch.backends.cudnn / .cuda
    docs=docs(why="torch.backends.cudnn.benchmark / deterministic and the tf32 switches tune CUDA only: on an NPU or "
                  "the CPU they do nothing while reading as if the run were tuned or deterministic.",
              how="Each assignment becomes porter_device.set_determinism(<flag>=<value>): set as written on CUDA, "
                  "ignored by the other devices. Reading a flag, and cudnn.enabled, are left alone (harmless "
                  "everywhere)."))

RULES = [VISIBLE_DEVICES, CUDNN_FLAGS]
