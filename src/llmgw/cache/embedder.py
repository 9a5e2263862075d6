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
                    raise ConfigError(f"cache.model: {source}: no such directory")
                path = None  # a hub id
        self._library_source: str | Path = path if path is not None else str(path_or_hub_id)
        try:
            model: Any = None
            if path is not None:
                if not (path / "config.json").exists():
                    raise ConfigError(f"cache.model: {source}: not a model2vec model directory "
                                      "(no config.json)")
                model = _PlainModel.load(path)
            if model is None:
                model = _library_model(self._library_source)
        except ConfigError:
            self._stack.close()
            raise
        except Exception as exc:
            self._stack.close()
            hint = (" (a hub id needs network access, or the model already in the Hugging Face cache; "
                    "use a local model2vec directory, or leave it unset for the bundled model)"
                    if path is None else "")
            raise ConfigError(f"cache.model: cannot load {source}: "
                              f"{type(exc).__name__}: {exc}{hint}") from exc
        self.source = source
        self._model = model
        self._dim = int(model.dim)
        # The single-text fast path (the cache's hot path) does what ``StaticModel.encode`` does for
        # one text, minus its per-call overhead (batching, tqdm, re-setting the tokenizer's
        # truncation twice, a second normalisation): the same tokenizer (truncation at max_length
        # already set), the same character pre-cut, the same unknown-token removal, the same mean.
        # Models with a token mapping or weights (vocabulary quantisation) keep the library path.
        self._fast = model.token_mapping is None and model.weights is None
        self._tokenizer = model.tokenizer
        self._embedding = model.embedding
        self._unk = model.unk_token_id
        self._max_tokens: int | None = model.max_length
        self._char_limit = model.max_length * model.median_token_length if model.max_length else None
        self._words: dict[str, list[int]] | None = {} if _is_bert_uncased(model.tokenizer) else None
        # added tokens ([CLS], [UNK]...) are matched in the raw text even without special tokens
        self._added = tuple(t.content for t in model.tokenizer.get_added_tokens_decoder().values())

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: list[str]) -> Vectors:
        if len(texts) == 1 and self._fast:
            return self._encode_one(texts[0])
        if not texts:
            import numpy as np

            return np.zeros((0, self._dim), dtype=np.float32)
        if isinstance(self._model, _PlainModel):  # batches (ablate, benchmarks) go through the library
            self._model = _library_model(self._library_source)
            self._tokenizer = self._model.tokenizer
            self._embedding = self._model.embedding
        raw = self._model.encode(list(texts), show_progress_bar=False, use_multiprocessing=False)
        return _normalise(raw)

    def _encode_one(self, text: str) -> Vectors:
        import numpy as np

        if self._char_limit is not None:
            text = text[:self._char_limit]
        ids = self._word_ids(text) if self._words is not None else None
        if ids is None:
            ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if self._unk is not None and self._unk in ids:
            ids = [i for i in ids if i != self._unk]
        out = np.zeros((1, self._dim), dtype=np.float32)
        if ids:
            emb = self._embedding
            # the mean's direction: an exact integer sum for int8 weights, then one normalisation
            # ndarray methods and the ufunc itself: numpy's Python-level wrappers cost ~2 µs a call
            out[0] = np.add.reduce(emb.take(ids, axis=0), axis=0, dtype=np.int32 if emb.dtype == np.int8 else None)
            norm = float(np.sqrt(out[0] @ out[0]))
            if norm > 0:
                out /= norm
        return out

    def _word_ids(self, text: str) -> list[int] | None:
        """Token ids of a printable-ASCII ``text`` from a cache of per-word WordPiece ids; ``None``
        for any other text, or one that contains an added token (the tokenizer handles those).

        For such text a BERT uncased tokenizer (normaliser: clean text, lowercase; pre-tokenizer:
        split on whitespace, every ASCII punctuation character a word of its own; no special tokens)
        is exactly: lower-case, split with ``_ASCII_WORDS``, WordPiece each word on its own, keep
        the first ``max_length`` ids. The words are cached, so the tokenizer only sees a word the
        first time (tests check the ids equal the tokenizer's on many texts)."""
        if not text.isascii() or _NOT_PRINTABLE.search(text):
            return None
        lowered = text.lower()
        if any(t in text or t.lower() in lowered for t in self._added):
            return None
        words = self._words
        assert words is not None
        if len(words) > _WORD_CACHE_MAX:
            words.clear()
        ids: list[int] = []
        for w in _ASCII_WORDS.findall(lowered):
            got = words.get(w)
            if got is None:
                got = words[w] = self._tokenizer.encode(w, add_special_tokens=False).ids
            ids += got
        if self._max_tokens is not None and len(ids) > self._max_tokens:
            del ids[self._max_tokens:]
        return ids

    def close(self) -> None:
        self._stack.close()


_ASCII_WORDS = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")  # runs of letters/digits, or one punctuation char
_NOT_PRINTABLE = re.compile(r"[^\t\n\r -~]")  # control characters (the normaliser drops or maps them)
_WORD_CACHE_MAX = 20_000  # words; a few MB at most, cleared when full (unique ids churn through it)


def _library_model(source: str | Path) -> Any:
    try:
        from model2vec import StaticModel
    except ImportError as exc:  # pragma: no cover - model2vec is a dependency
        raise ConfigError(f"cache.model: model2vec is not installed ({exc})") from exc
    return StaticModel.from_pretrained(source, normalize=True, force_download=False)


_SAFETENSORS_DTYPES = {"I8": "int8", "F16": "float16", "F32": "float32"}


class _PlainModel:
    """A model2vec directory whose ``model.safetensors`` holds only ``embeddings`` (no vocabulary
    quantisation: no ``weights``, no ``mapping``), loaded without importing model2vec.

    What ``StaticModel.from_pretrained(path, normalize=True)`` sets up for such a model, for the
    single-text fast path: the same tokenizer (padding off, truncation at ``max_length``), the same
    unknown-token id, median token length and vectors. Importing model2vec pulls in
    huggingface_hub, httpx and trio for downloads: ~40 MB of the cache process's memory that a
    local model never uses (measured: 48 -> 91 MB to load the bundled model). Batches still load
    the library (``Model2VecEmbedder.encode``)."""

    token_mapping = None
    weights = None

    def __init__(self, tokenizer: Any, embedding: Any, max_length: int | None) -> None:
        self.tokenizer = tokenizer
        self.embedding = embedding
        self.max_length = max_length
        self.dim = int(embedding.shape[1])
        vocab = tokenizer.get_vocab()
        import numpy as np

        self.median_token_length = int(np.median([len(t) for t in vocab]))
        unk = getattr(tokenizer.model, "unk_token", None)
        self.unk_token_id = None if unk is None else tokenizer.token_to_id(unk)

    @classmethod
    def load(cls, path: Path) -> _PlainModel | None:
        """The model in ``path``, or None when it needs the library (another layout or tokenizer
        model, vocabulary quantisation, an unknown dtype)."""
        import json

        import numpy as np
        from tokenizers import Tokenizer

        tensors, tokenizer_file = path / "model.safetensors", path / "tokenizer.json"
        if not tensors.is_file() or not tokenizer_file.is_file():
            return None
        config = json.loads((path / "config.json").read_text())
        raw = tensors.read_bytes()
        size = int.from_bytes(raw[:8], "little")
        if size <= 0 or 8 + size > len(raw):
            raise ValueError(f"{tensors}: not a safetensors file")
        header = json.loads(raw[8:8 + size])
        header.pop("__metadata__", None)
        spec = header.get("embeddings")
        dtype = _SAFETENSORS_DTYPES.get(spec.get("dtype", "")) if isinstance(spec, dict) else None
        if set(header) != {"embeddings"} or dtype is None or len(spec["shape"]) != 2:
            return None
        start, end = spec["data_offsets"]
        rows, dim = spec["shape"]
        embedding = np.frombuffer(raw, dtype=dtype, count=rows * dim, offset=8 + size + start).reshape(rows, dim)
        if (end - start) != embedding.nbytes:
            raise ValueError(f"{tensors}: the embeddings' offsets do not match their shape")
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        if not hasattr(tokenizer.model, "unk_token") or tokenizer.get_vocab_size() != rows:
            return None  # a unigram model, or vectors that do not match the vocabulary: the library decides
        padding = tokenizer.padding
        if padding is not None:
            tokenizer.enable_padding(pad_id=padding["pad_id"], pad_token=padding["pad_token"],
                                     pad_type_id=padding["pad_type_id"], length=0)
        max_length = config.get("max_length", 512)
        if max_length is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(int(max_length))
        return cls(tokenizer, embedding, None if max_length is None else int(max_length))


def _is_bert_uncased(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` is the BERT uncased pipeline ``Model2VecEmbedder._word_ids`` mirrors."""
    import json

    try:
        spec = json.loads(tokenizer.to_str())
    except Exception:  # pragma: no cover - a tokenizer that cannot describe itself keeps the slow path
        return False
    norm = spec.get("normalizer") or {}
    model = spec.get("model") or {}
    return (norm.get("type") == "BertNormalizer" and norm.get("clean_text") is True
            and norm.get("lowercase") is True and norm.get("strip_accents") in (None, True)
            and (spec.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and model.get("type") == "WordPiece")


def _looks_like_local_path(s: str) -> bool:
    """Hub ids are ``owner/name``; anything absolute, relative-dotted, home-based or deeper is a path."""
    return s.startswith(("/", ".", "~")) or s.count("/") != 1 or "\\" in s
