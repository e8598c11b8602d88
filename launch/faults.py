"""Fault injection for tests of recovery, set by ``RLPLAT_FAULT`` (comma-separated, unset in
normal runs, where these are no-ops):

- ``<point>:<step>`` makes the driver die abruptly (``os._exit``, no cleanup, like a killed
  process) when it reaches ``point`` (``after_generate``; ``after_train`` in the pair loop) in ``step``;
- ``kill:<actor name>:<step>`` kills that named actor at the start of ``step`` the way a crashed
  process dies; Ray restarts it (``resources.max_actor_restarts``) and the controller recovers.
"""
import os


def _specs() -> list:
    return [s for s in os.environ.get("RLPLAT_FAULT", "").split(",") if s]


def fault_point(point: str, step: int) -> None:
    if f"{point}:{step}" in _specs():
        print(f"rlplat: injected fault at {point} of step {step}", flush=True)
        os._exit(3)


def kill_actors(step: int) -> None:
    for spec in _specs():
        kind, _, rest = spec.partition(":")
        name, _, at = rest.rpartition(":")
        if kind == "kill" and at == str(step):
            import ray

            print(f"rlplat: injected fault: killing actor {name} at step {step}", flush=True)
            ray.kill(ray.get_actor(name), no_restart=False)
