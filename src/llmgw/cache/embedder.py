"""Text embedders for the semantic cache.

Owns turning prompt text into vectors. Invariants:

- ``encode(texts)`` returns a C-contiguous ``float32`` array of shape ``(len(texts), dim)`` whose rows
  have unit L2 norm, so a dot product *is* the cosine similarity. A text with no known token (e.g. the
  empty string) has no direction: its row is all zeros (cosine 0 with everything, never a hit).
- Deterministic: the same text gives the same vector, in any process.
- Local: the default model is bundled in the package (``llmgw/data/embeddings/``) and loads with no
  network; no prompt leaves the machine. A hub id works only for users with network access.
- Lazy: numpy and model2vec are imported when an embedder is built, never when this module is
  imported, so the gateway core stays light.

The bundled model is model2vec distilled from sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) by
``scripts/build_embedding_model.py``: 256 dimensions, int8 weights. A model2vec embedding is the mean of
its token vectors: word order is invisible and tokens after ``max_length`` (512) are dropped, and
prompts that differ in a single field (``brand: null`` vs ``brand: Nike``) score about 0.97-0.99. That
is why the semantic cache has a field guard; this module does not try to fix it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from llmgw.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

BUNDLED_MODEL = "minilm-l6-m2v-256"
BUNDLED_DIM = 256


@runtime_checkable
class Embedder(Protocol):
    """What the semantic cache needs from an embedder."""

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> Vectors:
        """Unit-norm float32 rows, one per text (zeros for a text with no direction)."""
        ...


def _normalise(vectors: Any) -> Vectors:
    import numpy as np

    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if out.ndim == 1:
        out = out.reshape(1, -1)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    out[(norms == 0).ravel()] = 0.0
    return out


def bundled_model_path() -> Path:
    """Directory of the model shipped in the package (a real directory in any normal install)."""
    return Path(str(resources.files("llmgw").joinpath("data", "embeddings", BUNDLED_MODEL)))


class Model2VecEmbedder:
    """A model2vec static model: the bundled one (``None``), a local directory, or a hub id.

    Raises ``ConfigError`` when the model cannot be loaded (missing path, or a hub id without network
    or cache), with a message that says what was tried.
    """

    def __init__(self, path_or_hub_id: str | Path | None = None) -> None:
        self._stack = contextlib.ExitStack()
        if path_or_hub_id is None:
            traversable = resources.files("llmgw").joinpath("data", "embeddings", BUNDLED_MODEL)
            path: Path | None = self._stack.enter_context(resources.as_file(traversable))
            source = f"bundled model {BUNDLED_MODEL}"
        else:
            path = Path(path_or_hub_id).expanduser()
            source = str(path_or_hub_id)
            if not path.exists():
                if _looks_like_local_path(str(path_or_hub_id)):
                    raise ConfigError(f"cache.embedding_model: {source}: no such directory")
                path = None  # a hub id
        try:
            from model2vec import StaticModel
        except ImportError as exc:  # pragma: no cover - model2vec is a dependency
            raise ConfigError(f"cache.embedding_model: model2vec is not installed ({exc})") from exc
        try:
            if path is not None:
                if not (path / "config.json").exists():
                    raise ConfigError(f"cache.embedding_model: {source}: not a model2vec model directory "
                                      "(no config.json)")
                model = StaticModel.from_pretrained(path, normalize=True, force_download=False)
            else:
                model = StaticModel.from_pretrained(str(path_or_hub_id), normalize=True, force_download=False)
        except ConfigError:
            self._stack.close()
            raise
        except Exception as exc:
            self._stack.close()
            hint = (" (a hub id needs network access, or the model already in the Hugging Face cache; "
                    "use a local model2vec directory, or leave it unset for the bundled model)"
                    if path is None else "")
            raise ConfigError(f"cache.embedding_model: cannot load {source}: "
                              f"{type(exc).__name__}: {exc}{hint}") from exc
        self.source = source
        self._model = model
        self._dim = int(model.dim)

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: list[str]) -> Vectors:
        if not texts:
            import numpy as np

            return np.zeros((0, self._dim), dtype=np.float32)
        raw = self._model.encode(list(texts), show_progress_bar=False, use_multiprocessing=False)
        return _normalise(raw)

    def close(self) -> None:
        self._stack.close()


def _looks_like_local_path(s: str) -> bool:
    """Hub ids are ``owner/name``; anything absolute, relative-dotted, home-based or deeper is a path."""
    return s.startswith(("/", ".", "~")) or s.count("/") != 1 or "\\" in s


_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """A deterministic FAKE embedder for tests of cache *policy* (thresholds, isolation, eviction),
    not of embedding quality. Do not use it to serve a cache.

    Each lower-cased word token is hashed (blake2b) to a signed bucket; the vector is the normalised
    bag of those buckets. Texts with the same words get the same vector (cosine 1.0), texts with no
    word in common are near-orthogonal, and overlap in between. Stable across processes and runs.
    """

    def __init__(self, dim: int = 64) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: list[str]) -> Vectors:
        import numpy as np

        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for token in _TOKEN.findall(text.lower()):
                h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
                out[i, h % self._dim] += 1.0 if (h >> 63) & 1 else -1.0
        return _normalise(out)
