"""A small project folder with hard-coded CUDA, as users bring them: what the folder and distribution targets and
`porter exec` are tested on (besides real PyPI packages, tests/generic/test_pypi_packages.py)."""
from __future__ import annotations

import textwrap
from pathlib import Path

TRAIN = '''\
import sys

import torch
import torch.nn as nn

from model.net import Net, total


def main():
    torch.manual_seed(0)
    net = Net().cuda()
    x = torch.ones(4, 3).cuda()
    out = net(x)
    torch.cuda.synchronize()
    print("sum", round(float(out.sum()), 4), "total", total())
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

NET = '''\
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)


def total():
    return float(torch.ones(3, device="cuda").sum())
'''


def write_project(root: Path, files: dict[str, str] | None = None) -> Path:
    files = files or {"train.py": TRAIN, "model/__init__.py": "", "model/net.py": NET}
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


