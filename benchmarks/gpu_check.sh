#!/usr/bin/env bash
# Every GPU check (issues 3, 5 and 14's backends) in one go (for a lent GPU machine; writes under $OUT).
# Usage: OUT=/some/dir bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CONVCOST_CACHE_DIR="$OUT/cache" CONVCOST_BENCH_DOC="$OUT/benchmarks.md"
py=python3
{ nvidia-smi; $py -c "import torch;print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } > "$OUT/env.txt" 2>&1
echo "== tests" ; timeout 240 $py -m pytest tests -q -p no:cacheprovider -x -k "cuda or torchvision or timing or models" 2>&1 | tail -15 | tee "$OUT/pytest.txt"
echo "== torchvision acceptance"
for m in resnet50 mobilenet_v2 shufflenet_v2_x1_0; do
  $py -m convcost analyze "torchvision:$m" --no-time -f json -o "$OUT/tv_$m.json" 2>/dev/null
  $py -c "import json;d=json.load(open('$OUT/tv_$m.json'));t=d['totals'];print('$m', f\"{t['params']:,} params\", f\"{t['macs']/1e9:.3f} G MACs total\", f\"{(d['by_operator']['conv']+d['by_operator'].get('linear',0))/1e9:.3f} G conv+fc\")"
done 2>&1 | tee "$OUT/torchvision.txt"
echo "== calibrate"; timeout 120 $py -m convcost calibrate --device cuda 2>&1 | tee "$OUT/calibrate.txt"
echo "== reality check: 64->64 3x3 56x56 fp16 channels-last batch 32"
timeout 120 $py -m convcost compare --device cuda --dtype fp16 --batch 32 --groups 1,2,4,8,32 \
  --variants grouped,shuffle,depthwise,separable --plot "$OUT/reality.png" -o "$OUT/reality.txt" 2>&1 | tail -3
timeout 120 $py -m convcost compare --device cuda --dtype fp16 --batch 32 --groups 1,2,4,8,32 \
  --variants grouped,shuffle,depthwise,separable -f json -o "$OUT/reality.json" 2>&1 | tail -2
cat "$OUT/reality.txt"
echo "== analyze resnet50 on cuda fp16 batch 32"
timeout 150 $py -m convcost analyze examples/models.py:ResNet50 --device cuda --dtype fp16 --batch 32 --max-time 0.3 -o "$OUT/resnet50_analyze.txt" 2>&1 | tail -2
tail -8 "$OUT/resnet50_analyze.txt"
echo "== backends on cuda (inductor via triton; onnxruntime where onnxruntime-gpu is installed)"
for b in inductor onnxruntime; do
  timeout 240 $py -m convcost compare --device cuda --dtype fp16 --groups 1,8 \
    --variants grouped,depthwise,separable --backend "eager,$b" --time-budget 200 \
    -o "$OUT/backend_$b.txt" 2>&1 | tail -3
  tail -12 "$OUT/backend_$b.txt" 2>/dev/null
done
timeout 240 $py -m pytest tests/test_cuda.py -q -p no:cacheprovider -k backends 2>&1 | tail -5
echo "== timing fidelity"
timeout 300 $py benchmarks/timing_fidelity.py --device cuda 2>&1 | tail -20
ls -la "$OUT"
