"""actors.quiet: what third-party libraries may print into the driver log (trainer.log_level)."""
import json
import os
import subprocess
import sys

from actors import quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh process: apply() changes process-wide logging, warnings and environment.
PROBE = """
import json, logging, sys, warnings
from actors import quiet
level = quiet.apply(sys.argv[1])
seen = []
handler = logging.Handler()
handler.emit = lambda record: seen.append(record.getMessage())
for name in ("vllm.model_executor.model_loader.reload.layerwise", "vllm.v1.worker.cpu_worker"):
    logging.getLogger(name).addHandler(handler)
logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").warning("%s: Failed to load weights", "RotaryEmbedding")
logging.getLogger("vllm.v1.worker.cpu_worker").warning("KV cache is too small")  # a real warning
with warnings.catch_warnings(record=True) as caught:
    warnings.warn("old API", FutureWarning)
import os
print(json.dumps({"level": level, "seen": seen, "future_warnings": len(caught),
                  "env": {k: os.environ.get(k) for k in ("VLLM_LOGGING_LEVEL", "DS_ACCELERATOR", "HF_HUB_DISABLE_PROGRESS_BARS")}}))
"""


SET_BY_QUIET = {*quiet.environment("warning"), "DS_ACCELERATOR"}  # a fresh process starts without them


def probe(level):
    proc = subprocess.run([sys.executable, "-c", PROBE, level], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k not in SET_BY_QUIET})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_warning_level_drops_known_harmless_noise_and_keeps_real_warnings():
    out = probe("warning")
    assert out["seen"] == ["KV cache is too small"]  # the per-sync RotaryEmbedding reload warning is gone
    assert out["future_warnings"] == 0
    assert out["env"] == {"VLLM_LOGGING_LEVEL": "WARNING", "DS_ACCELERATOR": "cpu", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def test_info_level_brings_everything_back():
    out = probe("info")
    assert out["seen"] == ["RotaryEmbedding: Failed to load weights", "KV cache is too small"]
    assert out["future_warnings"] == 1
    assert out["env"]["VLLM_LOGGING_LEVEL"] == "INFO" and out["env"]["HF_HUB_DISABLE_PROGRESS_BARS"] is None


def test_actor_environment_follows_the_level():
    quiet_env, loud_env = quiet.environment("warning"), quiet.environment("debug")
    assert quiet_env["RLPLAT_LOG_LEVEL"] == "warning" and "ignore::FutureWarning" in quiet_env["PYTHONWARNINGS"]
    assert loud_env == {"RLPLAT_LOG_LEVEL": "debug", "VLLM_LOGGING_LEVEL": "DEBUG"}
    assert quiet.DEFAULT == "warning" and quiet.is_quiet("warning") and not quiet.is_quiet("info")


def test_every_harmless_entry_says_why():
    assert all(name.startswith("vllm.") and prefix and why for name, prefix, why in quiet.HARMLESS)
