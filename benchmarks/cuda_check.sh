#!/usr/bin/env bash
# The GPU check of the CUDA path, prepared so that a session with a lent GPU spends its device time on
# measuring. Runs from the repository root with the machine's own python3 (torch, triton, timm), the
# package from the working tree (PYTHONPATH; nothing installed). Each section writes its log under $OUT as
# it ends, so a run cut short keeps the sections it finished. Pick sections with SECTIONS (in this order):
#   versions  torch / triton / timm / GPU; what CUDA's autocast does to upsampling and to the Elastic blocks
#   tests     the CUDA tests: the Triton kernels through the ops, autocast dtypes, compiled training
#   ops       each resampling op, PyTorch's kernels against ours (bf16 channels_last, fp32 NCHW)
#   models    the five pairs, eager bf16 channels_last, train and infer, resampling ours / aten (before) /
#             free (the floor), and fp16 training (ours)
#   compile   resnext50 pair under torch.compile, bf16 channels_last, train and infer
# Timings on one H200 were not taken yet when this was written: plan on two calls, e.g.
#   SECTIONS="versions tests ops" bash benchmarks/cuda_check.sh     (timeout_s ~400)
#   SECTIONS="models" bash benchmarks/cuda_check.sh                  (timeout_s ~450)
#   SECTIONS="compile" bash benchmarks/cuda_check.sh                 (if time is left)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/cuda_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SPEED=(benchmarks/speed.py --device cuda --rounds 4 --min-time 0.5 --warmup 3)

section() {  # section NAME COMMAND...: run, log to $OUT/NAME.log, report its time
    local name=$1 start=$SECONDS
    shift
    echo "=== $name: $*" | tee -a "$OUT/$name.log"
    "$@" 2>&1 | grep -v -e '^USDT' -e 'SyncActivityProfilerHandler' | tee -a "$OUT/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
}

for s in ${SECTIONS:-versions tests ops models compile}; do
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
        section tests "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_resample_triton.py tests/test_resample.py \
            -k 'cuda or triton'
        ;;
    ops)
        section ops "$PY" benchmarks/resample_ops.py --device cuda --dtype bf16 --layout cl
        section ops "$PY" benchmarks/resample_ops.py --device cuda --dtype fp32 --layout nchw
        ;;
    models)
        section models "$PY" "${SPEED[@]}" --settings eager-bf16-cl --modes train,infer --resample ours,aten \
            --json "$OUT/models_bf16.json"
        section models "$PY" "${SPEED[@]}" --settings eager-bf16-cl --modes train --resample free \
            --json "$OUT/models_free.json"
        section models "$PY" "${SPEED[@]}" --settings eager-fp16-cl --modes train --json "$OUT/models_fp16.json"
        ;;
    compile)
        section compile "$PY" "${SPEED[@]}" --pairs resnext50 --settings compile-bf16-cl,eager-bf16-cl \
            --modes train,infer --json "$OUT/compile.json"
        ;;
    *)
        echo "unknown section $s (versions tests ops models compile)" >&2
        exit 2
        ;;
    esac
done
