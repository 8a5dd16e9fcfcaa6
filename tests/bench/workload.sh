#!/bin/sh
# A KonomiTV-like workload: the entrypoint (PID 1) of the bench images.
#
# At start it records the simulated driver session (the container's view of
# the GPU) on a tmpfs, so `docker restart` records it afresh.  Then, every
# WORKLOAD_INTERVAL seconds, it "starts an encode task" by running
# `nvidia-smi -L`: success logs a normal live-status line, failure logs the
# ER-05 line KonomiTV prints when NVML is gone.
#
# Environment:
#   WORKLOAD_MODE      normal | tuner_fault (ER-05 while NVML works, as a real
#                      tuner fault does) | history (a few ER-05 lines at
#                      start, then healthy)
#   WORKLOAD_INTERVAL  seconds between tasks (default 1; fractions allowed)
#   WORKLOAD_PROBE     1: run nvidia-smi (konomi image); 0: never (nosmi image)
#   WORKLOAD_HISTORY   how many ER-05 lines history mode prints (default 3)

live="gr041-1080p"
ok="[INFO] [Live: $live] [Status: ONAir] ストリーミングを開始しました。"
er05="[INFO] [Live: $live] [Status: Restart] チューナーとの接続が切断されました。エンコードタスクを再起動しています… (ER-05)"
mode="${WORKLOAD_MODE:-normal}"
interval="${WORKLOAD_INTERVAL:-1}"
history="${WORKLOAD_HISTORY:-3}"
probe="${WORKLOAD_PROBE:-1}"
child=""

# PID 1 gets no default signal handling: without this trap every stop or
# restart would cost Docker's full grace period.  Children run in the
# background and are waited for, so the trap fires at once.
stop() {
    [ -n "$child" ] && kill "$child" 2>/dev/null
    echo "[INFO] [Live: $live] [Status: Offline] ライブストリームを終了しました。"
    exit 0
}
trap stop TERM INT

if [ -n "$FAKE_NVML_SESSION_FILE" ] && [ -r "$FAKE_NVML_STATE" ]; then
    session=$(sed -n 's/^session=//p' "$FAKE_NVML_STATE")
    echo "${session:-1}" > "$FAKE_NVML_SESSION_FILE"
fi

case "$mode" in
    normal|tuner_fault|history) ;;
    *) echo "workload: unknown WORKLOAD_MODE '$mode'" >&2; exit 2 ;;
esac

echo "[INFO] [Live: $live] [Status: Standby] ライブストリームを開始しています…"

encode_task() {
    if [ "$probe" != 1 ]; then
        echo "$ok"
        return
    fi
    # FAKE_NVML_NO_HANG: a "probe hang" in the bench hangs only the probes run
    # with docker exec, never this log.
    FAKE_NVML_NO_HANG=1 nvidia-smi -L >/dev/null 2>&1 &
    child=$!
    if wait "$child"; then echo "$ok"; else echo "$er05"; fi
    child=""
}

n=0
while :; do
    n=$((n + 1))
    if [ "$mode" = tuner_fault ]; then
        echo "$er05"
    elif [ "$mode" = history ] && [ "$n" -le "$history" ]; then
        echo "$er05"
    else
        encode_task
    fi
    sleep "$interval" &
    child=$!
    wait "$child"
    child=""
done
