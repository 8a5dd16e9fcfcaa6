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
#   WORKLOAD_APP       whose lines a failed task prints (the app's own log lines
#                      when CUDA or NVML is gone): konomitv (ER-05, the default),
#                      konomitv-er06, konomitv-e09hn, jellyfin, emby, plex
#                      (nothing useful), frigate, immich-ml, ollama, pytorch,
#                      tdarr, generic; tuner_fault and history modes print them too

live="gr041-1080p"
ok="[INFO] [Live: $live] [Status: ONAir] ストリーミングを開始しました。"
er05="[INFO] [Live: $live] [Status: Restart] チューナーとの接続が切断されました。エンコードタスクを再起動しています… (ER-05)"
mode="${WORKLOAD_MODE:-normal}"
app="${WORKLOAD_APP:-konomitv}"
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

# The lines each app prints when CUDA or NVML is gone, as its users report them.
fault_lines() {
    case "$app" in
        konomitv) echo "$er05" ;;
        konomitv-er06)
            echo "[INFO] [Live: $live] [Status: Restart] エンコーダーが強制終了されました。エンコードタスクを再起動しています… (ER-06)" ;;
        konomitv-e09hn)
            echo "[DEBUG] [NVEncC] CUDA not available."
            echo "[INFO] [Live: $live] [Status: Offline] お使いの PC 環境は NVEncC エンコーダーに対応していません。(E-09HN)" ;;
        jellyfin|emby)
            echo "[ERR] [42] MediaBrowser.MediaEncoding.Transcoding.TranscodeManager: FFmpeg exited with code 187" ;;
        plex)
            echo "Jobs: '/usr/lib/plexmediaserver/Plex Transcoder' exit code for process 1234 is 1 (failure)" ;;
        frigate)
            echo "[ffmpeg.front.detect] ERROR : [AVHWDeviceContext @ 0x55d0c0a0] cu->cuInit(0) failed -> CUDA_ERROR_UNKNOWN: unknown error" ;;
        immich-ml)
            echo "[E:onnxruntime:Default, cuda_call.cc:123 CudaCall] CUDA failure 999: unknown error ; GPU=0 ; expr=cudaSetDevice(info_.device_id);" ;;
        ollama)
            echo 'time=2025-01-28T16:57:48.900Z level=WARN source=gpu.go:605 msg="unknown error initializing cuda driver library /usr/lib/x86_64-linux-gnu/libcuda.so.1: cuda driver library init failure: 999"'
            echo 'time=2025-01-28T16:57:48.901Z level=INFO source=gpu.go:377 msg="no compatible GPUs were discovered"' ;;
        pytorch)
            echo "RuntimeError: CUDA unknown error - this may be due to an incorrectly set up environment, e.g. changing env variable CUDA_VISIBLE_DEVICES after program start. Setting the available devices to be zero." ;;
        tdarr)
            echo "[hevc_nvenc @ 0x5601] dl_fn->cuda_dl->cuInit(0) failed -> CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected" ;;
        generic) echo "Failed to initialize NVML: Unknown Error" ;;
    esac
}

case "$app" in
    konomitv|konomitv-er06|konomitv-e09hn|jellyfin|emby|plex|frigate|immich-ml|ollama|pytorch|tdarr|generic) ;;
    *) echo "workload: unknown WORKLOAD_APP '$app'" >&2; exit 2 ;;
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
    if wait "$child"; then echo "$ok"; else fault_lines; fi
    child=""
}

n=0
while :; do
    n=$((n + 1))
    if [ "$mode" = tuner_fault ]; then
        fault_lines
    elif [ "$mode" = history ] && [ "$n" -le "$history" ]; then
        fault_lines
    else
        encode_task
    fi
    sleep "$interval" &
    child=$!
    wait "$child"
    child=""
done
