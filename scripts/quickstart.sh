#!/usr/bin/env bash
# scripts/quickstart.sh — the README's two commands, from a fresh clone on Debian 12:
#
#   bash scripts/quickstart.sh bench [args]   build xattn_bench (build/release) and run it:
#       no args        the headline suite (about 3 minutes on two cores): one table, each family
#                      at its headline shape; results.json, table.md and tokens_per_s.png in
#                      bench-results/ (or --xattn_out=DIR)
#       --xattn_full   the full suite (every shape and thread count, tens of minutes)
#       any Google Benchmark flag, e.g. --benchmark_filter=softmax/xattn; --help lists them
#   bash scripts/quickstart.sh test           build and run the test suite three ways:
#       native  Release, -march=native                (build/native)
#       avx2    Release at -O2, -mavx2 -mfma          (build/avx2; the tests, not the examples)
#       asan    Debug, AddressSanitizer + UBSan       (build/asan; the tests, not the examples)
#     XATTN_BUILDS="native avx2" selects some of them.
#
# Both first install the Debian packages that are missing: with apt-get when run as root (or
# through sudo when it needs no password), otherwise they name the packages and stop.
set -euo pipefail

readonly packages=(g++ cmake ninja-build libeigen3-dev libxsimd-dev libgtest-dev libbenchmark-dev
  libbenchmark-tools python3-scipy python3-matplotlib libopenmpi-dev openmpi-bin)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly root
jobs="$(nproc 2>/dev/null || echo 2)"
readonly jobs

usage() {
  sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

install_packages() {
  local missing=() p
  for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
      missing+=("$p")
    fi
  done
  ((${#missing[@]} == 0)) && return 0

  local sudo=()
  if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo)
    else
      echo "quickstart: missing Debian packages: ${missing[*]}" >&2
      echo "quickstart: install them as root, then run this again:" >&2
      echo "  apt-get install --no-install-recommends ${missing[*]}" >&2
      exit 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "quickstart: apt-get not found; install the equivalents of: ${missing[*]}" >&2
    exit 1
  fi
  echo "quickstart: installing ${missing[*]}"
  "${sudo[@]}" apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# configure <build dir> <cmake args...>
configure() {
  local dir="$1"
  shift
  cmake -S "$root" -B "$root/$dir" -G Ninja "$@"
}

# The build's messages go to stderr, so that the bench's stdout is its table alone.
run_bench() {
  configure build/release -DCMAKE_BUILD_TYPE=Release \
    -DXATTN_ARCH_FLAGS="${XATTN_ARCH_FLAGS:--march=native}" \
    -DXATTN_BUILD_TESTS=OFF -DXATTN_BUILD_EXAMPLES=OFF -DXATTN_BUILD_BENCHMARKS=ON >&2
  cmake --build "$root/build/release" --target xattn_bench -j"$jobs" >&2
  exec "$root/build/release/bench/xattn_bench" "$@"
}

# test_build <name>: configure, build and run the suite in build/<name>; 0 if all passed.
test_build() {
  local name="$1" args=() env=() examples=ON
  case "$name" in
    native) args=(-DCMAKE_BUILD_TYPE=Release -DXATTN_ARCH_FLAGS=-march=native) ;;
    # -O2: the suite at the other optimisation level users build with (where g++ unrolls less:
    # the micro-kernels' XATTN_UNROLL pragmas are for it), and a quarter less compile time.
    avx2) args=(-DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" "-DXATTN_ARCH_FLAGS=-mavx2 -mfma")
      examples=OFF ;;  # the examples' code paths are the tests' own; they build and run in native
    # -Og: the sanitizers' documentation advises some optimisation (-O0 makes the vector code ~20x
    # slower); -Og compiled the instrumented test files in about half the time of -O1
    # (test_backward_rules.cpp 190 -> 68 s) and ran them about as fast.
    # -g1: line tables only, which is all a sanitizer's report prints; full -g nearly doubled
    # the compile time of the test files.
    asan)
      args=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-g1 -Og" -DXATTN_SANITIZE=ON
        -DXATTN_ARCH_FLAGS=-march=native)
      env=(XATTN_TEST_QUICK=1)
      # The examples build and run in the native build; instrumented, their build took a fifth
      # of this one's time and their code paths are the tests' own.
      examples=OFF ;;
    *)
      echo "quickstart: unknown build '$name' in XATTN_BUILDS (native, avx2, asan)" >&2
      return 1 ;;
  esac
  local dir="build/$name" log="$root/build/$name/ctest.log"
  echo "=== $name: $dir ==="
  rm -f "$log"
  configure "$dir" "${args[@]}" -DXATTN_BUILD_TESTS=ON -DXATTN_BUILD_EXAMPLES="$examples" -DXATTN_BUILD_BENCHMARKS=OFF \
    || return 1
  cmake --build "$root/$dir" -j"$jobs" || return 1
  (cd "$root/$dir" && env "${env[@]}" ctest --output-on-failure -j2) 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}

run_tests() {
  local builds name status=0 summary=() start line
  read -r -a builds <<<"${XATTN_BUILDS:-native avx2 asan}"
  for name in "${builds[@]}"; do
    start=$SECONDS
    if test_build "$name"; then
      line="PASS"
    else
      line="FAIL"
      status=1
    fi
    local closing
    closing="$(grep -E 'tests passed, [0-9]+ tests? failed' "$root/build/$name/ctest.log" 2>/dev/null | tail -n 1 || true)"
    summary+=("$(printf '%-6s %s in %ds: %s' "$name" "$line" $((SECONDS - start)) "${closing:-(no tests run)}")")
  done
  echo "=== summary ==="
  printf '%s\n' "${summary[@]}"
  return "$status"
}

(($# >= 1)) || usage
command="$1"
shift
case "$command" in
  bench)
    install_packages
    run_bench "$@" ;;
  test)
    (($# == 0)) || usage
    install_packages
    run_tests ;;
  *) usage ;;
esac
