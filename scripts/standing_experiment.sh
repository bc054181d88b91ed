#!/usr/bin/env bash
# The standing experiment of issue #26 (configs/regnet/table3_paper_c10.yaml, seed 0 of the three
# models, then seed 1 of resnet20 in a slot that would sit idle), run in the background of every
# session on this project's lent 2-core machines.
#
#   scripts/standing_experiment.sh start    # first thing in a session: data, source, carried runs, sweep
#   scripts/standing_experiment.sh status   # where each run stands
#   scripts/standing_experiment.sh stop     # Ctrl-C to the sweeps: each run keeps its checkpoint
#   scripts/standing_experiment.sh save     # stop, then pack the unfinished runs into carry/ (commit it)
#
# Commit each save as a new commit, never by amending: `start` resumes the runs from main's head,
# and their provenance names that commit, which scripts/commits_agree.py must check at publish time.
#
# The sweep runs from its own clone of this repository ($SELFREG_SRC), pulled at start, so edits
# to the work tree never reach a run mid-way; its folder ($SELFREG_RUNS) lives outside the work
# tree and is lost with the machine: `save` before a session stops, `start` restores it.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SRC=${SELFREG_SRC:-$HOME/selfreg-src}
RUNS=${SELFREG_RUNS:-$HOME/selfreg-runs}
RECIPE=configs/regnet/table3_paper_c10.yaml
SWEEP=$RUNS/table3-paper-c10
ARCHIVE=$REPO/carry/table3-paper-c10.tar.xz
DATA=$REPO/.data
TARBALL=$REPO/../shared/data/cifar10-jpeg-train.tar.xz
PY=$REPO/.venv/bin/python

sweep_pids() { pgrep -f "selfreg sweep $RECIPE${1:-}" || true; }

# One sweep command, detached in a session of its own, at the lowest CPU priority (autogroup):
# the work beside it keeps the machine responsive, and the runs' results do not depend on speed.
launch() {
    mkdir -p "$RUNS"
    # setsid: a session (and so an autogroup) of its own, which `stop` signals as one group.
    # -f: setsid forks and returns at once; nothing here waits on the sweep or holds our output.
    (cd "$SRC" && PYTHONPATH="$SRC/src" setsid -f nohup bash -c 'echo 19 > /proc/self/autogroup 2>/dev/null; exec "$@"' \
        sweep "$PY" -m selfreg sweep "$RECIPE" "data.root=$DATA" train.threads=1 -o "$SWEEP" "$@" \
        >> "$RUNS/sweep-paper.log" 2>&1 < /dev/null)
    echo "started: selfreg sweep $RECIPE $*; log $RUNS/sweep-paper.log"
}

# A run is finished once its summary.json exists, here or published.
unfinished_regnets() {
    local n=0
    for model in rrnet20_gru rrnet20_lstm; do
        [ -f "$SWEEP/$model/s0/summary.json" ] || [ -f "$REPO/docs/results/table3-paper-c10/$model/s0/summary.json" ] \
            || n=$((n + 1))
    done
    echo $n
}

# Idempotent: run again when a RegNet finishes mid-session, to fill its slot.
start() {
    if [ -z "$(sweep_pids)" ]; then
        [ -x "$PY" ] || make -C "$REPO" setup
        if [ ! -d "$DATA/train" ]; then mkdir -p "$DATA" && tar -xJf "$TARBALL" -C "$DATA"; fi
        # The clone is the sweep's copy of main and holds nothing of its own: it follows main even
        # where main was rewritten before it landed (an amended commit), which a pull refuses.
        if [ -d "$SRC/.git" ]; then git -C "$SRC" fetch -q origin main && git -C "$SRC" reset -q --hard FETCH_HEAD
        else git clone -q "$REPO" "$SRC"; fi
        if [ -f "$ARCHIVE" ]; then "$PY" "$REPO/scripts/carry_sweep.py" restore "$ARCHIVE" "$SWEEP"; fi
    fi
    local regnets; regnets=$(unfinished_regnets)
    # The RegNets' seed 0 two at a time; a slot they leave idle takes resnet20's seed 1.
    if [ "$regnets" -gt 0 ] && [ -z "$(sweep_pids ".*--only rrnet20")" ]; then
        launch --seeds 0 --only 'rrnet20_*' --parallel 2
    fi
    if [ "$regnets" -lt 2 ] && [ -z "$(sweep_pids ".*--only resnet20")" ]; then
        launch --seeds 1 --only resnet20
    fi
    echo "running: $(sweep_pids | xargs)"
}

stop() {
    local pids; pids=$(sweep_pids)
    [ -z "$pids" ] && { echo "no sweep running"; return; }
    for pid in $pids; do kill -INT -- "-$(ps -o pgid= -p "$pid" | tr -d ' ')" 2>/dev/null || true; done
    for _ in $(seq 120); do [ -z "$(sweep_pids)" ] && break; sleep 1; done
    [ -z "$(sweep_pids)" ] && echo "stopped; each run kept its last checkpoint" || { echo "still running: $(sweep_pids | xargs)"; return 1; }
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    save) stop && "$PY" "$REPO/scripts/carry_sweep.py" save "$SWEEP" "$ARCHIVE" ;;
    status) PYTHONPATH="$SRC/src" "$PY" -m selfreg sweep --status "$SWEEP"; tail -n 3 "$RUNS"/table3-paper-c10/logs/*.log ;;
    *) echo "usage: $0 start|status|stop|save" >&2; exit 2 ;;
esac
