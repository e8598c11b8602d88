"""What every pool of restartable actors shares: which errors mean "lost", and waiting for Ray's restart.

A pool (``EnginePool``, ``ScorerPool``) or a lone ``RestartingActor`` (the reward worker, the judge)
retries a call after a loss at most ``resources.max_actor_restarts`` times (Ray's restarts per
actor), bringing its own actors back to the state it last gave them before retrying; nothing
outside the pool knows its actors died.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import ray

# The actor died (Ray may be restarting it) or is temporarily unreachable.
ACTOR_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


def wait_until_answering(pings: Sequence[Callable[[], Any]], timeout_s: float) -> list:
    """Call every ``ping`` (a function that submits a tiny actor call and returns its ref) until its
    actor answers; a restarting actor refuses calls (``ActorUnavailableError``) until it is back.
    Returns the answers in order; raises after ``timeout_s`` seconds in all."""
    deadline = time.time() + timeout_s
    answers = []
    for ping in pings:
        while True:
            try:
                answers.append(ray.get(ping()))
                break
            except ray.exceptions.ActorUnavailableError:
                if time.time() > deadline:
                    raise
                time.sleep(1.0)
    return answers


def log_loss(who: str, exc: Exception) -> None:
    print(f"rlplat: {who}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}; "
          "recovering and retrying", flush=True)


class RestartingActor:
    """One named actor (``ray.remote(cls)``, restarted by Ray up to ``max_restarts`` times) whose
    calls survive its restarts: ``submit(method, *args).result()`` waits for a lost actor to
    answer ``ready()`` again and resubmits the call, at most ``max_restarts`` times. For actors
    whose calls depend only on their arguments (the reward worker, the preference judge).

        reward = RestartingActor(RewardWorker, "reward-0", cfg.reward, num_cpus=0.25, max_restarts=2)
        outcome = reward.call("score", responses, answers, prompts)
    """

    def __init__(self, cls: type, name: str, *args: Any, num_cpus: float, max_restarts: int,
                 restart_timeout_s: float = 600.0) -> None:
        self.name, self.max_restarts, self.restart_timeout_s = name, max_restarts, restart_timeout_s
        self.handle = ray.remote(num_cpus=num_cpus, max_restarts=max_restarts)(cls).options(name=name).remote(*args)
        self.restarts = 0

    def submit(self, method: str, *args: Any, retry: bool = True) -> "PendingCall":
        """``method(*args)`` in flight. ``retry=False``: ``result()`` raises what the call raised
        (for calls on ObjectRefs of other actors' results, which a resubmission cannot mend)."""
        return PendingCall(self, method, args, retry)

    def call(self, method: str, *args: Any) -> Any:
        return self.submit(method, *args).result()

    def recover(self, exc: Exception) -> None:
        log_loss(self.name, exc)
        self.restarts += 1
        wait_until_answering([self.handle.ready.remote], self.restart_timeout_s)

    def kill(self) -> None:
        ray.kill(self.handle)


class PendingCall:
    """A call in flight on a ``RestartingActor``; ``result()`` resubmits it after a loss."""

    def __init__(self, actor: RestartingActor, method: str, args: tuple, retry: bool = True) -> None:
        self.actor, self.method, self.args = actor, method, args
        self.retries = actor.max_restarts if retry else 0
        self.ref = self._submit()

    def _submit(self) -> Any:
        return getattr(self.actor.handle, self.method).remote(*self.args)

    def result(self) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return ray.get(self.ref)
            except ACTOR_LOST as exc:
                if attempt == self.retries:
                    raise
                self.actor.recover(exc)
                self.ref = self._submit()
