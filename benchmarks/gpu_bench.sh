#!/usr/bin/env bash
# On a GPU machine, from the repository root, after `source benchmarks/gpu_env.sh`: run one suite of
# benchmarks/run.py in the background (setsid: it outlives the device call that started it), watch it for at most
# $1 seconds (default 540), then pack its output folder and log into $OUT/<suite>.tar.gz: a device call brings
# back a limited number of files, and one archive always fits. A later call (the machine still warm) watches the
# same run instead of starting another, so a suite longer than one call's limit spans several.
#   SUITE=quality CONTINUE=benchmarks/results/2026-12-04_quality_fair BENCH_ARGS="--seeds 2 --data-root
#     $PWD/.data/fashion-mnist --features benchmarks/results/2026-12-04_quality_fair/fmnist_clf.pt" \
#     bash benchmarks/gpu_bench.sh 540
# CONTINUE: a results folder the run continues (copied as its output folder when the run starts: run.py skips
# the runs that already have a result). BENCH_DIR (default /tmp/dl/bench) holds <suite>/{out,work,run.log,pid,rc}.
# AFTER: another run's <suite> folder (its BENCH_DIR/<suite>): this run starts only once that one has ended (its
# rc written), so several runs queued in one call follow each other on the GPU without a gap between calls:
#   BENCH_DIR=/tmp/dl/bench2 AFTER=/tmp/dl/bench/quality SUITE=quality BENCH_ARGS="..." bash benchmarks/gpu_bench.sh 0
# Give the device call $1 + 60 s or more: the packing also runs when the call's limit stops the watch.
set -u
suite=${SUITE:?name the suite, e.g. SUITE=quality}
dir=${BENCH_DIR:-/tmp/dl/bench}/$suite
read -ra args <<< "${BENCH_ARGS:-}"
if [[ ! -f "$dir/pid" && -n "${AFTER:-}" && ! -f "$AFTER/pid" ]]; then
  echo "[bench] AFTER=$AFTER: no run was started there (no pid file); name the BENCH_DIR/<suite> folder of a started run" >&2
  exit 2
fi
mkdir -p "$dir" "$OUT"
if [[ ! -f "$dir/pid" ]]; then
  rm -rf "$dir/out" "$dir/rc"
  if [[ -n "${CONTINUE:-}" ]]; then cp -r "$CONTINUE" "$dir/out"; else mkdir -p "$dir/out"; fi
  # The exit status goes to rc, since a later call cannot wait for a process it did not start.
  setsid nohup bash -c 'if [[ -n "$2" ]]; then until [[ -f "$2/rc" ]]; do sleep 2; done; fi; "${@:3}"
    echo $? > "$1/rc"' _ "$dir" "${AFTER:-}" "${PY:-python3}" benchmarks/run.py "$suite" \
    --out "$dir/out" --work "$dir/work" "${args[@]}" > "$dir/run.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
  echo "[bench] started $suite (pid $(cat "$dir/pid"))${AFTER:+, once $AFTER has ended}: ${args[*]}"
fi
pid=$(cat "$dir/pid")
end=$((SECONDS + ${1:-540}))

pack() {
  trap - TERM INT
  tar czf "$OUT/$suite.tar.gz" -C "$dir" out run.log
  echo "[bench] packed $OUT/$suite.tar.gz"
}
trap 'pack; exit 1' TERM INT
while [[ ! -f "$dir/rc" ]] && kill -0 "$pid" 2> /dev/null && ((SECONDS + 10 < end)); do
  sleep 2 & wait $!  # a TERM interrupts the wait at once: the trap packs
done
if [[ -f "$dir/rc" ]]; then
  echo "[bench] $suite finished (exit $(cat "$dir/rc"))"
elif kill -0 "$pid" 2> /dev/null; then
  echo "[bench] $suite still running (pid $pid): call again to watch it"
else
  echo "[bench] $suite stopped without an exit status (killed?): see run.log"
fi
tail -n 8 "$dir/run.log"
pack
