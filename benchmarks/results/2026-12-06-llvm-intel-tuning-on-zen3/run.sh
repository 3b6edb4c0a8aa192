cd /work/main
for i in 1 2 3; do
  for cpu in host skylake; do
    if [ $cpu = host ]; then env -u NUMBA_CPU_NAME FASTLENET_TUNING=off NUMBA_CACHE_DIR=/tmp/intel/nc-host python -m benchmarks.kernel_profile --backend numba --steps 60 > /tmp/intel/$cpu-$i.txt 2>&1
    else NUMBA_CPU_NAME=skylake FASTLENET_TUNING=off NUMBA_CACHE_DIR=/tmp/intel/nc-sky python -m benchmarks.kernel_profile --backend numba --steps 60 > /tmp/intel/$cpu-$i.txt 2>&1; fi
  done
done
