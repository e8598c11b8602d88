"""``python3 .ci/stages.py "<command>"``: print a bash script that runs the command's top-level
`` && `` parts one after another in one shell (so ``. .venv/bin/activate`` and ``export`` carry on),
times each, and at exit, pass or fail, prints the wall seconds of every stage that ran (the one that
failed included) and the total; a failure stops the background stages.

The README's test command is one line of ``&&``-joined stages (venv, install, model builds, tests);
``.ci/run`` executes what this prints, so CI shows where its budget goes (issue 29).
"""
import re
import sys

HEADER = """set -euo pipefail
stage_log=$(mktemp)
t_all=$(date +%s)
current=""
killtree() {
  local child
  for child in $(pgrep -P "$1"); do killtree "$child"; done
  kill "$1" 2>/dev/null || true
}
report() {
  rc=$?
  # A background stage (the model builds, which run each build in a process of its own) must not
  # outlive a failure: stop every job with all its descendants.
  for j in $(jobs -p); do killtree "$j"; done
  echo
  echo "== CI stages: wall seconds =="
  cat "$stage_log"
  if [ -n "$current" ]; then echo "$(( $(date +%s) - t0 ))s  $current (stopped the run: exit $rc)"; fi
  echo "$(( $(date +%s) - t_all ))s  total (exit $rc)"
  exit $rc
}
trap report EXIT"""


def stages(command: str) -> list:
    """The top-level `` && `` parts of a one-line command (no quoting of ``&&`` inside a part)."""
    return [part.strip() for part in command.strip().split(" && ") if part.strip()]


def script(command: str) -> str:
    lines = [HEADER]
    for part in stages(command):
        label = re.sub(r"[^A-Za-z0-9 ._/=:,\[\]-]", "", part).strip()[:100]  # safe inside double quotes
        if part.startswith("{") and part.endswith("& }"):
            label = f"{label} (started in the background)"
        elif part.startswith("wait"):
            label = "waiting for the background stage"
        lines.append(f't0=$(date +%s); current="{label}"\n{part}\n'
                     f'echo "$(( $(date +%s) - t0 ))s  {label}" >> "$stage_log"; current=""')
    return "\n".join(lines)


if __name__ == "__main__":
    print(script(sys.argv[1]))
