"""Fault injection for tests of recovery: ``RLPLAT_FAULT=<point>:<step>`` makes the driver die
abruptly (``os._exit``, no cleanup, like a killed process) when it reaches ``point`` in ``step``.
Points: ``after_generate``, ``after_train``. Unset in normal runs: then this is a no-op."""
import os


def fault_point(point: str, step: int) -> None:
    spec = os.environ.get("RLPLAT_FAULT")
    if spec and spec == f"{point}:{step}":
        print(f"rlplat: injected fault at {point} of step {step}", flush=True)
        os._exit(3)
