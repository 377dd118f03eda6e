"""What no rule can port, reported with where it is and what to use instead: never left in silence.

After a plan, every CUDA-only site still in the planned sources (porter.scan's catalogue), plus every ``.cu`` /
``.cuh`` file of the target, is an *unsupported site*. Each gets a tip by what it uses: a custom CUDA extension, a
triton kernel, cpm_kernels, bitsandbytes, apex, CUDA graphs, stream and event semantics, or the runtime call that
would replace it when one exists. ``porter patch --unsupported FILE.csv`` writes them in the columns of
msFmkTransplt's ``unsupported_op.csv`` (File, Start Line, End Line, OP, Tips)."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("File", "Start Line", "End Line", "OP", "Tips")

# api prefix -> (why no rule ports it, what to use instead); the first prefix that matches wins
TIPS: tuple[tuple[str, str], ...] = (
    ("torch.utils.cpp_extension.", "a compiled extension: its CUDA kernels have no CPU or NPU build. Where its "
     "sources are C++ only it builds on any host; otherwise keep a torch reference path for other devices, or write "
     "the op for the device (Ascend: an AscendC custom op registered through torch_npu)"),
    (".cu file", "CUDA C++ source: no rule rewrites kernels. Give the op a torch reference path (porter.runtime.ops "
     "shows the pattern: reference math plus guarded device kernels) or an AscendC op for the NPU"),
    ("import triton", "triton kernels compile for CUDA (and ROCm) GPUs only: guard the import and keep a torch path "
     "(on Ascend, triton-ascend runs some kernels)"),
    ("import cpm_kernels", "cpm_kernels ships CUDA-only int8/int4 kernels (ChatGLM's quantisation): dequantise to "
     "the compute dtype on other devices"),
    ("import bitsandbytes", "bitsandbytes' 8-bit optimisers and quantised layers are CUDA kernels: use torch.optim "
     "(AdamW) and torch.ao quantisation, or the device's own"),
    ("import apex", "NVIDIA apex: use torch.amp for amp (porter_device's autocast), torch.optim.AdamW for FusedAdam, "
     "torch.nn.LayerNorm for FusedLayerNorm; on Ascend, torch_npu's fused optimisers"),
    ("import xformers", "xformers' attention kernels are CUDA-only: torch.nn.functional.scaled_dot_product_attention "
     "(porter.runtime.ops.attention) computes the same"),
    ("import flash_attn", "flash-attn is CUDA-only: torch.nn.functional.scaled_dot_product_attention, or "
     "torch_npu.npu_fusion_attention on an NPU (porter.runtime.ops.attention dispatches)"),
    ("torch.cuda.CUDAGraph", "CUDA graphs capture CUDA kernels: run the captured code eagerly on other devices "
     "(torch_npu's NPUGraph where the release has it)"),
    ("torch.cuda.graph", "CUDA graphs capture CUDA kernels: run eagerly on other devices"),
    ("torch.cuda.make_graphed_callables", "CUDA graphs: call the modules eagerly on other devices"),
    ("torch.cuda.Stream", "a CUDA stream: overlap semantics differ per device; porter.runtime.device's stream calls "
     "map to the device's streams where it has them"),
    ("torch.cuda.Event", "a CUDA event (timing, stream sync): time with porter_device.synchronize() and "
     "time.perf_counter(), or the device's events"),
    ("torch.cuda.", "no rule ports this torch.cuda API: call the selected device through porter.runtime.device, or "
     "guard it with porter_device.is_available()"),
    ("@torch.jit.script", "TorchScript fuses for CUDA; the plain function runs everywhere"),
)


@dataclass(frozen=True)
class Unsupported:
    path: str
    start_line: int
    end_line: int
    op: str
    tips: str

    def row(self) -> list:
        return [self.path, self.start_line, self.end_line, self.op, self.tips]


def tip_for(api: str) -> str:
    from .scan import replacement_for

    for prefix, tip in TIPS:
        if api.startswith(prefix):
            return tip
    replacement = replacement_for(api)
    return f"no rule ported it here: use {replacement}" if replacement else "no rule ports it: port it by hand"


def find_unsupported(plan, progress=lambda _m: None) -> list[Unsupported]:
    """The sites a plan leaves: every CUDA-only site in the planned sources of the target's Python files, and its
    CUDA source files."""
    from .journal import read_original
    from .scan import python_files, sites_in
    from .state import load_journal

    installed = plan.installed
    read = read_original(installed, load_journal(installed))
    planned = {f.path: f.after for f in plan.files}
    if installed.target.generic:
        from .generic import source_files

        rels = source_files(installed)
    else:
        rels = [str(f.relative_to(installed.root)) for f in python_files(installed.package_dir)]
    exempt = installed.target.scan_exempt or {}
    import fnmatch

    found = []
    for site in sites_in([(rel, planned[rel] if rel in planned else read(rel)) for rel in rels], progress):
        if any(fnmatch.fnmatchcase(site.key, pattern) for pattern in exempt):
            continue
        found.append(Unsupported(site.path, site.line, max(site.line, site.end_line), site.api, tip_for(site.api)))
    for rel in cuda_sources(installed):
        found.append(Unsupported(rel, 1, 1, ".cu file", tip_for(".cu file")))
    return sorted(found, key=lambda u: (u.path, u.start_line, u.op))


def cuda_sources(installed) -> list[str]:
    """The target's CUDA C++ files (.cu, .cuh)."""
    import os

    found = []
    tops = [installed.root] if installed.target.kind == "folder" else \
        [installed.root / top for top in installed.tops if not top.endswith(".py")]
    for top in tops:
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "node_modules")
                       and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))]
            found += [Path(folder, f).relative_to(installed.root).as_posix() for f in files
                      if f.endswith((".cu", ".cuh"))]
    return sorted(found)


def write_csv(found: list[Unsupported], path: Path) -> None:
    from .outputs import write_output

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for item in found:
        writer.writerow(item.row())
    write_output(path, out.getvalue().encode(), "--unsupported")
