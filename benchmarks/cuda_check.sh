#!/usr/bin/env bash
# The GPU check of the CUDA path, prepared so that a session with a lent GPU spends its device time on
# measuring. Runs from the repository root with the machine's own python3 (torch, triton, timm), the
# package from the working tree (PYTHONPATH; nothing installed). Every section appends to $OUT/check.log as
# it goes and the speed runs write their JSON after every row, so a run cut short keeps what it finished
# ($OUT holds 10 files at most: check.log and one JSON per speed or host run). Pick sections with SECTIONS, in
# the order given; NAME:SECONDS stops a section after that many seconds (the rest still run):
#   versions  torch / triton / timm / GPU; what CUDA's autocast does to upsampling and to the Elastic blocks
#   tests     the CUDA tests: the Triton kernels through the ops, their second derivatives, autocast dtypes,
#             compiled training, the scale policy's scores under CUDA autocast
#   ops       each resampling op, PyTorch's kernels against ours (bf16 channels_last timed by graph replay
#             and by events, fp32 NCHW), then ours at other tile sizes and warps (bf16 channels_last)
#   models    the five pairs, eager bf16 channels_last, train and infer, resampling ours / aten (before)
#   breakdown resnext50 and dla pairs, eager bf16 channels_last training: each model's 15 costliest kernels
#   host      the host's time per call: one op's launch by layer (launch_overhead.py), then each op and an Elastic
#             block's resampling through autograd, PyTorch's against ours (resample_ops.py --timer host, batch 1)
#   gap       resnext101 and densenet201 pairs, eager bf16 channels_last training, ours, free and ours again in one
#             process, with each model's 15 costliest kernels and the time its kernels ran (see "Speed")
#   infer     the five pairs, eager bf16 channels_last inference, ours and free (the floor) in one process
#   fp16      the five pairs, eager fp16 channels_last training (ours)
#   floor     the five pairs, eager bf16 channels_last training, resampling free (the floor)
#   compile   resnext50 pair under torch.compile, bf16 channels_last (COMPILE_MODES, default train,infer);
#             then the Triton kernels inductor generated that use atomics (none expected)
# Every name and limit is checked before anything runs, then that a CUDA device is visible to $PYTHON (default
# python3). Exit status: 0 when every command exited 0; 1 when one failed or ran out of its section's time
# (check.log says which) or no CUDA device is visible; 2 for a bad SECTIONS; 128 + the signal's number when
# stopped by TERM or INT (the outer `timeout` below): the running command is stopped with it, the log says so.
# ROUNDS (default 4) and MIN_TIME (default 0.5 s) set the speed runs' interleaved rounds and round length.
# One 15-minute lease (a start takes 1-2 minutes of it) fits one call of about 590 s, or two calls when the second
# follows at once (the machine is given back after 30 s idle).
# Measured on an H200 (ROUNDS=2 MIN_TIME=0.3): versions 17-19 s; tests 72-73 in 100-143 s, then the compiled ones
# (the compiled backward's atomics, the compiled training test, AMP x2, the scale policy's: 5 tests, 138-252 s);
# ops 31 s (graph), 16 s (events), 33 s (fp32), the tile sweep over 21 s; models 223-230 s (cut before
# densenet201's aten inference); breakdown 50 s for two pairs; compile (train) 166-172 s; floor 86 s; gap 214 s;
# fp16 127 s for the five pairs; the host timings of resample_ops.py about 40 s.
# Still open after 2026-11-27 (README, "Speed"): the host's time per op after the direct path (host), the
# inference floor (infer), the direct path's effect on the host-bound densenet201 (gap), the direct path's CUDA
# test (in tests before the compiled ones, which are known to pass):
#   SECTIONS="versions host:90 infer:120 gap:220 tests:120" ROUNDS=2 MIN_TIME=0.3 timeout 585 bash benchmarks/cuda_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/cuda_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SPEED=(benchmarks/speed.py --device cuda --rounds "${ROUNDS:-4}" --min-time "${MIN_TIME:-0.5}" --warmup 3)
LOG="$OUT/check.log"
NAMES="versions tests ops models breakdown host gap infer fp16 floor compile"
SECTIONS=${SECTIONS:-versions tests ops models breakdown fp16 floor compile}
LIMIT=    # seconds the current section may still run (empty: no limit)
RUNNING=  # the running command's pid (under a limit its `timeout`, which passes a signal on to the command)
FILTER=   # the pid of the filter that copies the running command's output to the log
CURRENT=  # the running section's name
FAILED=() # the commands that failed or ran out of time, as "NAME (exit N)"
STATE=$(mktemp -d)  # the filter's FIFO and the inductor cache this script makes: outside $OUT, removed at exit
trap 'rm -rf "$STATE"' EXIT

log() { echo "$*" | tee -a "$LOG"; }

refuse() {  # refuse STATUS MESSAGE: say why nothing runs, on stderr and in the log, and exit
    echo "cuda_check.sh: $2" | tee -a "$LOG" >&2
    exit "$1"
}

stop() {  # stop SIGNAL: TERM or INT from outside (the outer `timeout`): pass it on to the running command
    # a second one is ignored: `timeout` sends TERM to the script and then to its process group, the script again,
    # which would end it (unlogged) while it waits for the command to stop
    trap '' TERM INT
    if [[ -n $RUNNING ]]; then
        kill -"$1" "$RUNNING" 2>/dev/null
        wait "$RUNNING"
    fi
    [[ -z $FILTER ]] || wait "$FILTER"
    log "=== stopped by SIG$1 after $SECONDS s${CURRENT:+, in section $CURRENT}: the sections after it did not run"
    exit $((128 + $(kill -l "$1")))
}
trap 'stop TERM' TERM
trap 'stop INT' INT

section() {  # section NAME COMMAND...: run (within the section's limit), log to $LOG, report its time
    local name=$1 start=$SECONDS rc run
    shift
    log "=== $name: $*"
    run=("$@")
    if [[ -n $LIMIT ]]; then
        local left=$((END - SECONDS))
        if ((left <= 0)); then
            log "=== $name: skipped, the section's $LIMIT s are spent"
            return
        fi
        # its own process group: at the limit the command's children are stopped too
        run=(timeout --signal=INT --kill-after=10 "$left" "$@")
    fi
    # the command runs in the background, so that a signal to this script is handled at once (`stop`); the
    # filter ignores TERM and INT, so that the log keeps what the command says until it has stopped
    rm -f "$STATE/fifo" && mkfifo "$STATE/fifo"
    (
        trap '' TERM INT
        grep --line-buffered -v -e '^USDT' -e 'SyncActivityProfilerHandler' <"$STATE/fifo" | tee -a "$LOG"
    ) &
    FILTER=$! CURRENT=$name
    "${run[@]}" <&0 >"$STATE/fifo" 2>&1 &
    RUNNING=$!
    wait "$RUNNING"
    rc=$?
    RUNNING=
    wait "$FILTER"
    FILTER= CURRENT=
    if ((rc == 0)); then
        log "=== $name: exit 0, $((SECONDS - start)) s"
    elif [[ -n $LIMIT ]] && ((rc == 124 || rc == 137)); then
        log "=== $name: exit $rc, $((SECONDS - start)) s: stopped at the section's limit of $LIMIT s"
        FAILED+=("$name (timed out)")
    else
        log "=== $name: exit $rc, $((SECONDS - start)) s"
        FAILED+=("$name (exit $rc)")
    fi
}

# every section name and limit first: a typo found after minutes of measuring costs the lease
[[ -n ${SECTIONS// /} ]] || refuse 2 "SECTIONS names no section: use $NAMES, each as NAME or NAME:SECONDS"
for s in $SECTIONS; do
    name=${s%%:*}
    if [[ " $NAMES " != *" $name "* ]]; then
        refuse 2 "unknown section '$name' in SECTIONS=\"$SECTIONS\": use $NAMES, each as NAME or NAME:SECONDS"
    fi
    if [[ $s == *:* && ! ${s#*:} =~ ^[1-9][0-9]*$ ]]; then
        refuse 2 "section '$s' in SECTIONS: its limit after ':' is a whole number of seconds > 0, e.g. $name:120"
    fi
done
cuda=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>&1)
if [[ ! ${cuda##*$'\n'} =~ ^[1-9][0-9]*$ ]]; then
    refuse 1 "no CUDA device is visible to $PY (torch.cuda.device_count(): ${cuda##*$'\n'}): nothing run"
fi

for s in $SECTIONS; do
    LIMIT=
    if [[ $s == *:* ]]; then
        LIMIT=${s#*:} s=${s%%:*}
        END=$((SECONDS + LIMIT))
    fi
    case $s in
    versions)
        section versions nvidia-smi -L
        section versions "$PY" - <<'EOF'
import torch, torch.nn.functional as F, triton, timm, timm_elastic
print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__,
      'gpu', torch.cuda.get_device_name())
x = torch.randn(2, 8, 14, 14, device='cuda', dtype=torch.bfloat16)
with torch.autocast('cuda', dtype=torch.bfloat16):
    print('autocast bf16: F.interpolate(bf16) ->', F.interpolate(x, scale_factor=2., mode='bilinear').dtype,
          '| up2x_add ->', torch.ops.timm_elastic.up2x_add(x, torch.randn_like(x.repeat(1, 1, 2, 2)), 'bilinear').dtype)
    m = timm.create_model('resnext50_elastic').cuda().to(memory_format=torch.channels_last)
    seen = []
    for mod in m.modules():
        if isinstance(mod, timm_elastic.layers.Elastic):
            mod.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    m(torch.randn(2, 3, 224, 224, device='cuda').contiguous(memory_format=torch.channels_last))
print('resnext50_elastic Elastic block outputs under bf16 autocast:', {str(d): seen.count(d) for d in set(seen)})
EOF
        ;;
    tests)
        # the CUDA tests (test_triton_compile.py's checks for sm_70 to sm_120 are the CPU's: CI runs them)
        section tests "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_resample_triton.py tests/test_resample.py \
            tests/test_policy.py -k 'cuda or triton'
        ;;
    ops)
        section ops "$PY" benchmarks/resample_ops.py --device cuda --dtype bf16 --layout cl
        section ops "$PY" benchmarks/resample_ops.py --device cuda --dtype bf16 --layout cl --timer events
        section ops "$PY" benchmarks/resample_ops.py --device cuda --dtype fp32 --layout nchw
        section ops "$PY" benchmarks/resample_ops.py --device cuda --dtype bf16 --layout cl \
            --tiles 1024,2048,4096,8192 --warps 4,8
        ;;
    models)
        section models "$PY" "${SPEED[@]}" --settings eager-bf16-cl --modes train,infer --resample ours,aten \
            --json "$OUT/models_bf16.json"
        ;;
    breakdown)
        section breakdown "$PY" "${SPEED[@]}" --pairs resnext50,dla --settings eager-bf16-cl --modes train \
            --breakdown 15 --json "$OUT/breakdown.json"
        ;;
    host)
        section host "$PY" benchmarks/launch_overhead.py --json "$OUT/launch.json"
        section host "$PY" benchmarks/resample_ops.py --device cuda --dtype bf16 --layout cl --timer host \
            --batch-size 1 --json "$OUT/host_ops.json"
        ;;
    gap)
        section gap "$PY" "${SPEED[@]}" --pairs resnext101,densenet --settings eager-bf16-cl --modes train \
            --resample ours,free,ours --breakdown 15 --json "$OUT/gap.json"
        ;;
    infer)
        section infer "$PY" "${SPEED[@]}" --settings eager-bf16-cl --modes infer --resample ours,free \
            --json "$OUT/infer.json"
        ;;
    fp16)
        section fp16 "$PY" "${SPEED[@]}" --settings eager-fp16-cl --modes train --json "$OUT/models_fp16.json"
        ;;
    floor)
        section floor "$PY" "${SPEED[@]}" --settings eager-bf16-cl --modes train --resample free \
            --json "$OUT/models_free.json"
        ;;
    compile)
        if [[ -n ${TORCHINDUCTOR_CACHE_DIR:-} ]]; then  # yours: kept, what it held is reused and counted below
            log "=== compile: the inductor cache is TORCHINDUCTOR_CACHE_DIR=$TORCHINDUCTOR_CACHE_DIR (kept as it is)"
            cache=$TORCHINDUCTOR_CACHE_DIR
        else  # a new one, so that compilation is timed and the kernels counted below are this run's
            cache=$(mktemp -d "$STATE/inductor.XXXXXX")
        fi
        TORCHINDUCTOR_CACHE_DIR=$cache section compile "$PY" "${SPEED[@]}" --pairs resnext50 --settings compile-bf16-cl,eager-bf16-cl \
            --modes "${COMPILE_MODES:-train,infer}" --json "$OUT/compile.json"
        LIMIT=  # the check below reads files: it runs even when the compilation spent the section's time
        # calls only: every inductor kernel's metadata reads 'atomic_add_found': False
        section compile bash -c 'echo "inductor Triton kernels: $(grep -rlE "@triton.jit" "$0" | wc -l) files, \
with atomic calls: $(grep -rlE "atomic_[a-z]+ *\(" "$0" | wc -l)"; grep -rlE "atomic_[a-z]+ *\(" "$0" | head' \
            "$cache"
        ;;
    esac
done
if ((${#FAILED[@]})); then
    failed=$(printf ', %s' "${FAILED[@]}")
    log "=== done after $SECONDS s: ${#FAILED[@]} command(s) failed or ran out of time: ${failed:2}"
    exit 1
fi
log "=== done after $SECONDS s: every command exited 0"
