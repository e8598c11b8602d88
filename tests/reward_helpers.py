"""Reward functions for tests of data columns and weighted rewards (``tests.reward_helpers:<name>``)."""


def uses_bonus(response, answer, prompt, bonus):
    """The data column ``bonus`` (a named parameter) as the reward."""
    return float(bonus)


def takes_all(response, answer, prompt, **columns):
    """How many columns reached it (``**kwargs`` gets every one)."""
    return float(len(columns))


def takes_none(response, answer, prompt):
    """A plain reward: 1.0, and it would raise on any unexpected keyword."""
    return 1.0


def length(response, answer, prompt):
    """The response's length in characters."""
    return float(len(response))


def fails_on_x(response, answer, prompt):
    """Raises for the response "x": a failure that must be counted, never turned into 0."""
    if response == "x":
        raise ValueError("no reward for x")
    return 1.0


def exact_with_bonus(response, answer, prompt, bonus):
    """The built-in arithmetic reward plus the row's ``bonus`` column: for the runtime test."""
    from rlplat.tasks.arithmetic import score

    return float(score(response, answer)) + float(bonus)


HARD_BONUS = 0.5  # exact_by_difficulty's extra reward on a "hard" row


def exact_by_difficulty(response, answer, prompt, difficulty):
    """The arithmetic reward plus ``HARD_BONUS`` on rows whose ``difficulty`` column is "hard": a
    reward that can only be computed from the extra column (for the runtime test of saved datasets)."""
    from rlplat.tasks.arithmetic import score

    return float(score(response, answer)) + (HARD_BONUS if difficulty == "hard" else 0.0)
