#!/usr/bin/env bash
# Every benchmark, one after the other, into bench/RESULTS.md:
#   1. bench/ingest.py (its own "Ingest" section, plot bench/ingest-concurrency.png);
#   2. bench/process.py and 3. bench/read.py with their defaults, their output pasted under
#      their own headings;
#   4. bench/memory.py (its own "memory" section: the server's RSS after 10,000,000 events).
# Each benchmark replaces only its own section of RESULTS.md; the others are kept.
#
#   bench/run_all.sh                      # all defaults (read.py builds a 3.9 GB store once)
#   bench/run_all.sh --runs 2             # arguments go to bench/ingest.py
#   PROCESS_ARGS="--prefill 100000 --measure 50000 --lag-seconds 5" \
#   READ_ARGS="--events 200000 --profiles 20000 --requests 300" \
#   MEMORY_ARGS="--events 300000 --profiles 30000" bench/run_all.sh   # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PYTHONUNBUFFERED=1
RESULTS=${RESULTS:-bench/RESULTS.md}  # RESULTS=/tmp/r.md bench/run_all.sh … to try it out

$PY bench/ingest.py --results "$RESULTS" "$@"

paste_section() {  # NAME TITLE COMMAND OUTPUT_FILE
    $PY - "$@" "$RESULTS" <<'PY'
import re
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, "bench")
from ingest import replace_section

name, title, command, output, results = sys.argv[1:6]
# Progress lines rewritten in place with \r: keep what was printed last.
lines = [line.split("\r")[-1] for line in Path(output).read_text().splitlines()]
# Progress lines (read.py's "  1,200,000 events (6 s)" while it builds its store) are dropped.
lines = [line for line in lines if not re.fullmatch(r"\s+([\d,]+ events \(\d+ s\)|building .*)", line)]
date = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
body = "\n".join(line for line in lines if line.strip())
replace_section(
    Path(results),
    name,
    f"## {title}\n\n- **Date**: {date}\n- **Command**: `{command}`\n\n```\n{body}\n```\n",
)
PY
}

run() {  # NAME TITLE SCRIPT ARGS...
    local name=$1 title=$2 script=$3
    shift 3
    local out
    out=$(mktemp)
    echo "== $script $*"
    $PY "$script" "$@" | tee "$out"
    paste_section "$name" "$title" "$PY $script${*:+ $*}" "$out"
    rm -f "$out"
}

# shellcheck disable=SC2086  # the *_ARGS are word lists on purpose
run process "Processing (\`bench/process.py\`)" bench/process.py ${PROCESS_ARGS:-}
# shellcheck disable=SC2086
run read "Reads (\`bench/read.py\`)" bench/read.py ${READ_ARGS:-}
echo "== bench/memory.py ${MEMORY_ARGS:-}"
# shellcheck disable=SC2086
$PY bench/memory.py --results "$RESULTS" ${MEMORY_ARGS:-}
echo "written to $RESULTS"
