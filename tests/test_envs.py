"""rlplat.envs: the protocol, the registries, tool schemas and argument checks, the parsers, the
generic tool environment and the built-in environments, driven by scripted model turns.
The sandbox's limits are tests/test_sandbox.py."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlplat.config.errors import ConfigError
from rlplat.envs import (
    COUNTERS, ENVIRONMENTS, PARSERS, TOOLS, StepResult, ToolCall, ToolResult, Toolbox, make_env, make_parser,
    make_tool, step_info,
)
from rlplat.envs.calc import MAX_DIGITS, evaluate
from rlplat.envs.guess import GuessNumber
from rlplat.envs.tool_env import CalcArithmetic, ToolEnv
from rlplat.tasks.arithmetic import ArithmeticTask

REPO = Path(__file__).resolve().parents[1]

# A module of user components, importable as ``user_envs:...`` (the ``user_module`` fixture).
USER_MODULE = textwrap.dedent(
    """
    from rlplat.envs import Tool, ToolResult

    class Add(Tool):
        name = "add"
        description = "Add two integers."
        parameters = {"type": "object",
                      "properties": {"a": {"type": "integer"}, "b": {"type": "integer"},
                                     "mode": {"type": "string", "enum": ["exact", "rounded"]}},
                      "required": ["a", "b"]}

        def run(self, a, b, mode="exact"):
            return str(a + b)

    class Boom(Tool):
        name = "boom"
        description = "Always fails."
        parameters = {"type": "object", "properties": {}}

        def run(self):
            raise RuntimeError("the tool broke")

    class Chatty(Tool):
        name = "chatty"
        description = "Talks too much."
        parameters = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

        def run(self, n):
            return "y" * n

    class Slow(Tool):
        name = "slow"
        description = "Reports a timeout."
        parameters = {"type": "object", "properties": {}}

        def run(self):
            return ToolResult("stopped", error=True, timeout=True)

    class Nameless(Tool):
        name = "has space"
        description = "A bad name."
        parameters = {"type": "object", "properties": {}}

        def run(self):
            return ""

    class NotAnEnv:
        def reset(self, row):
            return ""

    class NeedsSize:
        def __init__(self, size):
            self.size = size

        def reset(self, row):
            return ""

        def step(self, turn):
            return None

    def not_a_class():
        return None

    def in_units(response, answer, prompt, unit):
        return 1.0 if response.strip() == f"{answer} {unit}" else 0.0
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_envs.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_envs"
    sys.modules.pop("user_envs", None)


# -- protocol ----------------------------------------------------------------------------------

def test_step_info_holds_every_counter_and_refuses_unknown_ones():
    assert step_info(tool_calls=2) == {"tool_calls": 2, "tool_errors": 0, "tool_timeouts": 0, "truncated": 0}
    assert tuple(StepResult("", 0.0, True).info) == COUNTERS
    with pytest.raises(TypeError, match="tool_cals"):
        step_info(tool_cals=1)


def test_importing_rlplat_envs_pulls_in_no_heavy_runtime():
    code = ("import sys\nfor m in ('ray', 'vllm', 'deepspeed'):\n    sys.modules[m] = None\n"
            "import rlplat.envs\nprint(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


# -- registries --------------------------------------------------------------------------------

def test_builtin_names_resolve_to_their_classes():
    assert ENVIRONMENTS.names() == ["calc_arithmetic", "guess_number", "tools"]
    assert TOOLS.names() == ["calc", "python"]
    assert PARSERS.names() == ["hermes", "tiny"]
    assert type(make_env("builtin:guess_number")) is GuessNumber
    assert type(make_env("builtin:calc_arithmetic")) is CalcArithmetic
    assert make_tool("builtin:calc").name == "calc"
    assert make_tool({"name": "builtin:python", "params": {"wall_s": 3}}).sandbox.limits.wall_s == 3


def test_module_class_names_resolve(user_module):
    assert make_tool(f"{user_module}:Add").run(a=1, b=2) == "3"
    env = make_env("builtin:tools", {"tools": [f"{user_module}:Add"], "parser": "builtin:hermes",
                                     "reward": f"{user_module}:in_units"})
    assert env.toolbox.names() == ["add"]
    env.reset({"prompt": "2+2 in apples?", "answer": "4", "unit": "apples"})
    assert env.step("4 apples").reward == 1.0  # the reward got its data column, as rewards do


@pytest.mark.parametrize("spec, params, message", [
    ("builtin:nope", None, r"no built-in environment 'nope'; built-in: builtin:calc_arithmetic, builtin:guess_number"),
    ("guess_number", None, r"'guess_number' is neither 'builtin:<name>'"),
    ("", None, r"must be 'builtin:<name>'"),
    ("no_such_module_xyz:Env", None, r"module 'no_such_module_xyz' not found"),
    ("{m}:Missing", None, r"module 'user_envs' has no attribute 'Missing'"),
    ("{m}:not_a_class", None, r"is a function, not a class"),
    ("{m}:NotAnEnv", None, r"NotAnEnv has no step method"),
    ("{m}:NeedsSize", {"colour": 1}, r"NeedsSize does not take params \['colour'\]"),
    ("builtin:guess_number", {"low": 0}, r"GuessNumber does not take params \['low'\]"),
    ("builtin:tools", {"tools": ["builtin:calx"]}, r"params.tools\[0\]='builtin:calx': no built-in tool 'calx'"),
    ("builtin:tools", {"parser": "builtin:qwen"}, r"params.parser='builtin:qwen': no built-in tool-call parser 'qwen'"),
    ("builtin:tools", {"reward": "nope"}, r"params.reward='nope' is neither a registered reward"),
])
def test_bad_environment_names_say_what_is_wrong(user_module, spec, params, message):
    with pytest.raises(ConfigError, match=r"^rollout\.env") as info:
        make_env(spec.format(m=user_module), params)
    assert re.search(message, str(info.value)), str(info.value)


def test_bad_tool_and_parser_names_say_what_is_wrong(user_module):
    with pytest.raises(ConfigError, match=r"rollout.tools='builtin:calx': no built-in tool 'calx'; built-in: builtin:calc, builtin:python"):
        make_tool("builtin:calx")
    with pytest.raises(ConfigError, match=r"unknown sandbox limits \['walltime'\]"):
        make_tool({"name": "builtin:python", "params": {"walltime": 3}})
    with pytest.raises(ConfigError, match=r"must be a tool name or \{name: \.\.\., params"):
        make_tool({"tool": "builtin:calc"})
    with pytest.raises(ConfigError, match=r"NotAnEnv has no run or schema method, so it is not a tool"):
        make_tool(f"{user_module}:NotAnEnv")
    with pytest.raises(ConfigError, match=r"parser='builtin:json': no built-in tool-call parser 'json'; built-in: builtin:hermes, builtin:tiny"):
        make_parser("builtin:json")


# -- tool schemas and argument checks ----------------------------------------------------------

HERMES_STYLE_TEMPLATE = (
    "{% if tools %}<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n{% endif %}"
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
)


def test_tool_schemas_go_through_a_tokenizers_chat_template(user_module):
    from rlplat.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()  # offline; given a template that renders tools, as Qwen's and Hermes' do
    tokenizer.chat_template = HERMES_STYLE_TEMPLATE
    toolbox = Toolbox([make_tool("builtin:calc"), make_tool("builtin:python"), make_tool(f"{user_module}:Add")])
    text = tokenizer.apply_chat_template([{"role": "user", "content": "38*45?"}], tools=toolbox.schemas(), tokenize=False)
    rendered = text.split("<tools>\n", 1)[1].split("</tools>", 1)[0].splitlines()
    assert [json.loads(line) for line in rendered] == toolbox.schemas()
    assert toolbox.schemas()[0] == {"type": "function", "function": {
        "name": "calc", "description": make_tool("builtin:calc").description,
        "parameters": {"type": "object", "properties": {"expression": {"type": "string", "description": "the expression, e.g. 38*45"}},
                       "required": ["expression"]}}}
    assert text.endswith("user: 38*45?\n")


def test_a_tool_with_a_bad_schema_or_a_repeated_name_is_refused(user_module):
    with pytest.raises(ValueError, match=r"tool Nameless: name 'has space' is not 1-64"):
        Toolbox([make_tool(f"{user_module}:Nameless")])
    with pytest.raises(ValueError, match="two tools are named 'calc'"):
        Toolbox([make_tool("builtin:calc"), make_tool("builtin:calc")])


@pytest.mark.parametrize("arguments, problem", [
    ({"a": 1}, "missing argument 'b'"),
    ({"a": 1, "b": 2, "c": 3}, "unexpected argument 'c' (takes a, b, mode)"),
    ({"a": "1", "b": 2}, "argument 'a' must be integer, got str '1'"),
    ({"a": True, "b": 2}, "argument 'a' must be integer, got bool True"),
    ({"a": 1.5, "b": 2}, "argument 'a' must be integer, got float 1.5"),
    ({"a": 1, "b": 2, "mode": "fuzzy"}, "argument 'mode' must be one of ['exact', 'rounded']"),
    ("1 2", "tool 'add' takes 3 arguments (a, b, mode), not one text"),
])
def test_bad_arguments_become_error_observations(user_module, arguments, problem):
    toolbox = Toolbox([make_tool(f"{user_module}:Add")])
    result = toolbox.call(ToolCall("add", arguments))
    assert result.error and not result.timeout and problem in result.text, result
    assert toolbox.call(ToolCall("add", {"a": 1, "b": 2, "mode": "rounded"})) == ToolResult("3")


def test_toolbox_failures_are_results_and_long_outputs_are_cut(user_module):
    toolbox = Toolbox([make_tool(f"{user_module}:{name}") for name in ("Boom", "Chatty")], max_output_chars=60)
    assert toolbox.call(ToolCall("boom", {})) == ToolResult("error: RuntimeError: the tool broke", error=True)
    assert toolbox.call(ToolCall("nope", {})) == ToolResult("error: unknown tool 'nope'; tools: boom, chatty", error=True)
    assert toolbox.call(ToolCall("", {}, error="bad JSON")) == ToolResult("error: bad JSON", error=True)
    assert toolbox.call(ToolCall("chatty", {"n": 75})) == ToolResult("y" * 60 + "...[15 more characters]", truncated=True)
    assert toolbox.call(ToolCall("chatty", {"n": 60})) == ToolResult("y" * 60)


# -- calc ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("expression, value", [
    ("38*45", 1710), (" (12 + 3) * -2 ", -30), ("7/2", 3.5), ("7//2", 3), ("7 % 4", 3), ("2**10", 1024), ("1.5*2", 3.0),
])
def test_calc_evaluates_arithmetic(expression, value):
    assert evaluate(expression) == value and type(evaluate(expression)) is type(value)


@pytest.mark.parametrize("expression, error", [
    ("__import__('os').system('true')", ValueError), ("x + 1", ValueError), ("'a' * 3", ValueError),
    ("1 < 2", ValueError), ("9**9**9", ValueError), ("(-8) ** 0.5", ValueError), ("10.0**400", OverflowError),
    ("1/0", ZeroDivisionError), ("1 +", SyntaxError), ("1+" * 150 + "1", ValueError),
])
def test_calc_refuses_everything_else_quickly(expression, error):
    with pytest.raises(error):
        evaluate(expression)


def test_calc_bounds_integer_size():
    assert len(str(evaluate(f"10**{MAX_DIGITS - 1}"))) == MAX_DIGITS
    with pytest.raises(ValueError, match="more than"):
        evaluate(f"10**{MAX_DIGITS - 1} * 10")


# -- parsers -------------------------------------------------------------------------------------

def test_hermes_reads_several_calls_and_reports_malformed_ones():
    turn = ('Let me compute.<tool_call>\n{"name": "calc", "arguments": {"expression": "38*45"}}\n</tool_call>'
            '<tool_call>{"name": "calc", "arguments": {"expression": </tool_call>'
            '<tool_call>{"arguments": {}}</tool_call>'
            '<tool_call>{"name": "calc", "arguments": "38*45"}</tool_call>'
            '<tool_call>{"name": "python"}</tool_call>'
            '<tool_call>{"name": "calc", "arg')
    calls = make_parser("builtin:hermes").parse(turn)
    assert calls[0] == ToolCall("calc", {"expression": "38*45"})
    assert calls[1].error.startswith("the tool call is not valid JSON (Expecting value")
    assert calls[2].error == 'a tool call is a JSON object {"name": "...", "arguments": {...}}'
    assert calls[3].error == "'arguments' of tool 'calc' must be a JSON object, got str"
    assert calls[4] == ToolCall("python", {})
    assert calls[5].error == "<tool_call> is not closed by </tool_call>"
    assert len(calls) == 6
    assert make_parser("builtin:hermes").parse("The answer is 1710.") == []


def test_hermes_results_are_tool_response_blocks():
    assert make_parser("builtin:hermes").format_results(["1710", "error: x"]) == (
        "<tool_response>\n1710\n</tool_response>\n<tool_response>\nerror: x\n</tool_response>")


def test_tiny_reads_tagged_calls_and_reports_unclosed_tags():
    tiny = make_parser("builtin:tiny")
    assert tiny.parse(" <calc>38*45</calc>") == [ToolCall("calc", "38*45")]
    assert tiny.parse("<calc>1+2</calc> and <python>print(3 < 4)</python>") == [
        ToolCall("calc", "1+2"), ToolCall("python", "print(3 < 4)")]
    unclosed = tiny.parse("<calc>38*45")
    assert len(unclosed) == 1 and unclosed[0].error == "<calc> is not closed by </calc>"
    assert tiny.parse(" 1710<eos><calc>1</calc>") == []  # after <eos> nothing counts, as in scoring
    assert tiny.parse(" 1710") == []
    assert tiny.format_results(["1710", "3"]) == "<out>1710</out><out>3</out>"


# -- environments --------------------------------------------------------------------------------

def test_generic_tool_env_runs_a_scripted_episode():
    env = make_env("builtin:tools", {"tools": ["builtin:calc", {"name": "builtin:python", "params": {"wall_s": 5}}],
                                     "parser": "builtin:hermes", "reward": "arithmetic"})
    assert env.reset({"prompt": "What is 38*45+7?", "answer": "1717"}) == "What is 38*45+7?"
    first = env.step('<tool_call>{"name": "calc", "arguments": {"expression": "38*45"}}</tool_call>'
                     '<tool_call>{"name": "python", "arguments": {"code": "print(1710 + 7)"}}</tool_call>')
    assert first == StepResult("<tool_response>\n1710\n</tool_response>\n<tool_response>\n1717\n</tool_response>",
                               0.0, False, step_info(tool_calls=2))
    second = env.step('<tool_call>{"name": "calc", "arguments": {"expr": "1"}}</tool_call><tool_call>oops</tool_call>')
    assert not second.done and second.info == step_info(tool_calls=2, tool_errors=2)
    assert "missing argument 'expression'" in second.observation and "not valid JSON" in second.observation
    assert env.step("It is 1717.") == StepResult("", 1.0, True, step_info())
    env.reset({"prompt": "What is 38*45+7?", "answer": "1717"})
    assert env.step("It is 1700.").reward == 0.0


def test_tool_errors_timeouts_and_truncation_are_counted(user_module):
    env = ToolEnv(tools=[f"{user_module}:Slow", f"{user_module}:Chatty", "builtin:python"], parser="builtin:hermes",
                  max_output_chars=24)
    env.reset({"prompt": "p", "answer": "1"})
    calls = ['{"name": "slow", "arguments": {}}', '{"name": "chatty", "arguments": {"n": 30}}',
             '{"name": "python", "arguments": {"code": "raise SystemExit(3)"}}']
    result = env.step("".join(f"<tool_call>{c}</tool_call>" for c in calls))
    assert result.info == step_info(tool_calls=3, tool_errors=2, tool_timeouts=1, truncated=1)
    assert "<tool_response>\nerror: exit status 3\n</tool_response>" in result.observation


def test_python_tool_reports_a_hang_as_a_timeout():
    python = make_tool({"name": "builtin:python", "params": {"wall_s": 0.5}})
    result = python.run(code="print('started', flush=True)\nimport time\ntime.sleep(30)")
    assert result.error and result.timeout
    assert result.text == "started\nerror: stopped at the timeout limit"
    assert python.run(code="print(2 + 2)") == ToolResult("4")


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="before reset"):
        make_env("builtin:calc_arithmetic").step("1")
    with pytest.raises(RuntimeError, match="before reset"):
        GuessNumber().step("1")


def test_calc_arithmetic_rewards_the_tool_user_on_the_task_rows():
    rows = ArithmeticTask(digits=2, ops=("*",)).generate("train", 20, seed=0)
    env = make_env("builtin:calc_arithmetic")
    for row in rows:
        assert env.reset(row) == row["prompt"]
        expression = row["prompt"].rstrip("=")
        called = env.step(f" <calc>{expression}</calc>")
        assert called == StepResult(f"<out>{row['answer']}</out>", 0.0, False, step_info(tool_calls=1))
        answer = re.fullmatch(r"<out>(\d+)</out>", called.observation).group(1)
        assert env.step(f" {answer}") == StepResult("", 1.0, True, step_info())
    env.reset(rows[0])
    failed = env.step(" <calc>38*</calc>")
    assert failed.observation.startswith("<out>error: SyntaxError") and not failed.done
    assert failed.info["tool_calls"] == failed.info["tool_errors"] == 1
    assert env.step(f" {int(rows[0]['answer']) + 1}").reward == 0.0  # a wrong final answer


def _binary_search(env: GuessNumber, low: int, high: int):
    """Play the game by bisection; returns (guesses, observations, final reward)."""
    guesses, observations = [], []
    while True:
        guess = (low + high) // 2
        guesses.append(guess)
        result = env.step(f" {guess}")
        observations.append(result.observation)
        assert result.info == step_info()
        if result.done:
            return guesses, observations, result.reward
        if result.observation == "higher":
            low = guess + 1
        else:
            assert result.observation == "lower"
            high = guess - 1


@pytest.mark.parametrize("secret", [0, 37, 99])
def test_guess_number_answers_higher_and_lower_and_rewards_the_hit(secret):
    env = make_env("builtin:guess_number")
    assert env.reset({"prompt": "guess 0-99:", "answer": str(secret)}) == "guess 0-99:"
    guesses, observations, reward = _binary_search(env, 0, 99)
    assert reward == 1.0 and guesses[-1] == secret and len(guesses) <= 7
    assert observations[-1] == ""
    for guess, seen in zip(guesses[:-1], observations[:-1]):
        assert seen == ("higher" if secret > guess else "lower")


def test_guess_number_asks_for_a_number_and_refuses_a_bad_secret():
    env = GuessNumber()
    env.reset({"prompt": "guess:", "answer": "5"})
    assert env.step("no idea") == StepResult("a number", 0.0, False, step_info())
    assert env.step("<eos>5").observation == "a number"
    assert env.step("5<eos>") == StepResult("", 1.0, True, step_info())
    with pytest.raises(ValueError, match="secret integer, got 'five'"):
        env.reset({"prompt": "guess:", "answer": "five"})


# -- docs ----------------------------------------------------------------------------------------

def test_the_docs_example_runs(tmp_path, monkeypatch):
    doc = (REPO / "docs" / "envs.md").read_text()
    example = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert len(example.splitlines()) <= 40
    (tmp_path / "my_envs.py").write_text(example)
    (tmp_path / "my_rewards.py").write_text("def exact(response, answer, prompt):\n    return float(response.strip() == answer)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        env = make_env("my_envs:Countdown")
        assert env.reset({"prompt": "from 2:", "answer": "2"}) == "from 2:"
        assert [env.step(t) for t in ("2", "1", "0")][-1] == StepResult("", 1.0, True, step_info())
        tools = make_env("builtin:tools", {"tools": ["my_envs:Reverse"], "parser": "builtin:hermes", "reward": "my_rewards:exact"})
        tools.reset({"prompt": "reverse abc", "answer": "cba"})
        step = tools.step('<tool_call>{"name": "reverse", "arguments": {"text": "abc"}}</tool_call>')
        assert step.observation == "<tool_response>\ncba\n</tool_response>"
        assert tools.step("cba").reward == 1.0
    finally:
        sys.modules.pop("my_envs", None)
        sys.modules.pop("my_rewards", None)
