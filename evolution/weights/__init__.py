"""The weights on disk, below the mind: loading and converting models (`model`), the BLAS mlx
computes with (`blas`), safetensors layout and content hashes (`files`)."""
