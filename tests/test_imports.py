"""``rlplat`` is the pure library: every module imports with Ray, vLLM and DeepSpeed unavailable."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import importlib, pkgutil, sys
for blocked in ("ray", "vllm", "deepspeed"):
    sys.modules[blocked] = None  # any import of them now raises ImportError
import rlplat
names = [m.name for m in pkgutil.walk_packages(rlplat.__path__, "rlplat.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_rlplat_module_imports_without_ray_vllm_deepspeed():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip().splitlines()[-1]) >= 25  # the walk really found the library's modules
