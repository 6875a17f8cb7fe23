#!/bin/bash
# CMU end to end, forced AVX2, oneDNN vs fbgemm kernels, interleaved
# bash benchmarks/e2e_engines_avx2.sh > benchmarks/results/e2e-cmu-forced-avx2-onednn-vs-fbgemm.txt
cd "$(dirname "$0")/.."
export ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2
for r in 1 2 3; do
  for e in torch-int8-onednn torch-int8-fbgemm; do
    rm -rf ${OUT:-/tmp/wsi-nuc-e2e-engines}/$e
    /usr/bin/time -f "%e s wall" .venv/bin/wsi-nuc run ../shared/slides/CMU-1-Small-Region.svs --out ${OUT:-/tmp/wsi-nuc-e2e-engines}/$e --engine $e --quiet 2>&1 | tail -1 | sed "s/^/$r $e /"
    .venv/bin/python -c "import json; s=json.load(open('${OUT:-/tmp/wsi-nuc-e2e-engines}/$e/CMU-1-Small-Region/summary.json')); print('   ', s['engine'], s['nucleus_count'], s['seconds'])"
  done
  uptime
done
