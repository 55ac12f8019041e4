"""Semantic bases (paper §3.1, §4.2) and the vocabulary alignment between teacher and student (by token).

With logits = W h for an LM head W: [vocab V, d_model D] of full column rank, S = pinv(W): [D, V] gives one
latent vector per token; the bases array is S transposed, `[V, D]`, rows unit-normalised (the paper
assumes unit-norm columns). Row i of Sᵀ is W[i] G⁻¹ with G = WᵀW: [D, D], so G is accumulated in float64
over row chunks, inverted once, and the rows are streamed chunk by chunk: peak memory O(D² + chunk·D),
where one-piece float64 pinv of a 151,936 × 1,536 head does not fit beside the model.

Variants:
- "head": pinv of the LM head as is (the paper).
- "head_normed": pinv of W' = W diag(γ), the final RMSNorm gain folded in (logits = W(γ ⊙ norm(h))).
  pinv(W diag γ) = diag(γ)⁻¹ pinv(W), so its rows are the head rows divided by γ: no second pass.
- "input": the same recipe applied to the input embedding E: [V, D] (the paper's input-side contrast).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from semalign.config import positive
from semalign.errors import SemalignError
from semalign.models import final_norm, load_tokenizer
from semalign.progress import progress
from semalign.store import ArraySpec, BackgroundWriter, StoreWriter

VARIANTS = ("head", "head_normed", "input")
# κ(G) = κ(W)²; past this the float64 inverse keeps fewer than ~4 correct digits.
MAX_GRAM_CONDITION = 1e12
FORMAT = "semalign-bases/1"  # part of the store fingerprint: a change to the recipe must rebuild stores


@dataclass(frozen=True)
class BasesConfig:
    """`bases` section: which variants to write, vocabulary rows per chunk of the store, and its codec
    ("none" or "zstd": zstd makes float32 bases 8 % smaller, and decompressing them took a third of fold's
    time on the real pair)."""

    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    chunk_rows: int = positive(16384)
    codec: str = "none"


def gram(w: torch.Tensor, chunk_rows: int, device: torch.device | str | None = None) -> torch.Tensor:
    """G = wᵀw in float64, accumulated over row chunks. `w: [V, D]` -> `[D, D]`."""
    device = w.device if device is None else torch.device(device)
    g = torch.zeros(w.shape[1], w.shape[1], dtype=torch.float64, device=device)
    for start in range(0, w.shape[0], chunk_rows):
        rows = w[start : start + chunk_rows].to(device, torch.float64)
        g.addmm_(rows.T, rows)
    return g


def inverse_gram(g: torch.Tensor, what: str = "matrix") -> torch.Tensor:
    """G⁻¹ through its eigendecomposition, refusing a singular or ill-conditioned G. `g: [D, D]` float64."""
    eigenvalues, eigenvectors = torch.linalg.eigh(g)
    smallest, largest = eigenvalues[0].item(), eigenvalues[-1].item()
    if not smallest > 0 or largest / smallest > MAX_GRAM_CONDITION:
        raise SemalignError(
            f"the {what} is rank-deficient or ill-conditioned "
            f"(eigenvalues of WᵀW in [{smallest:.3g}, {largest:.3g}]); "
            "its pseudoinverse bases are undefined: check that the model weights loaded correctly"
        )
    return (eigenvectors / eigenvalues) @ eigenvectors.T


def pinv_row_chunks(
    w: torch.Tensor, g_inv: torch.Tensor, chunk_rows: int, chunks: list[int] | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(chunk index, rows of pinv(w)ᵀ for it, not normalised): `w: [V, D]`, `g_inv: [D, D]` = (wᵀw)⁻¹ ->
    float64 `[chunk_rows, D]` blocks (the last may be short), for `chunks` (default: all) in order."""
    if chunks is None:
        chunks = list(range(-(-w.shape[0] // chunk_rows)))
    for i in chunks:
        yield i, w[i * chunk_rows : (i + 1) * chunk_rows].to(g_inv.device, torch.float64) @ g_inv


def unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """`rows: [n, D]` scaled to unit L2 norm, as float32. A zero row (the basis of an all-zero weight row,
    e.g. a zeroed padding token) has no direction and stays zero rather than becoming NaN."""
    norms = rows.norm(dim=1, keepdim=True)
    return (rows / torch.where(norms > 0, norms, 1.0)).float()


def gain_reciprocal(gain: torch.Tensor) -> torch.Tensor:
    """1/γ in float64, `[D]`: the column scale that turns head bases rows into head_normed ones."""
    if (gain == 0).any():
        raise SemalignError(
            f"the final norm gain has {int((gain == 0).sum())} zero entries, so the norm-folded head is "
            "rank-deficient; drop 'head_normed' from the bases variants"
        )
    return 1.0 / gain.detach().to(torch.float64)


def pinv_rows(w: torch.Tensor, chunk_rows: int = 16384, gain: torch.Tensor | None = None) -> torch.Tensor:
    """Unit-normalised rows of pinv(w diag(gain))ᵀ in memory: `w: [V, D]`, `gain: [D]` -> `[V, D]` float32."""
    g_inv = inverse_gram(gram(w, chunk_rows))
    scale = 1.0 if gain is None else gain_reciprocal(gain)
    return torch.cat([unit_rows(rows * scale) for _, rows in pinv_row_chunks(w, g_inv, chunk_rows)])


def write_bases(
    model: PreTrainedModel,
    store_path: str | Path,
    model_id: str,
    variants: tuple[str, ...] = VARIANTS,
    chunk_rows: int = 16384,
    codec: str = "zstd",
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Write the requested bases of `model` as float32 arrays `[V, D]`, named by variant, into one store.

    `model_id` identifies the weights (e.g. name + hash) and goes into the store fingerprint, so a store of
    other weights is rebuilt, not resumed. Computation runs on `device` (default: the weights' device).
    Returns seconds: "<source>_gram" (G and its inverse), "<source>_rows" (rows + store writes), "total".
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise SemalignError(f"bases variants {unknown or list(variants)} are invalid; choose from {VARIANTS}")
    started = time.perf_counter()
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    tied = head.data_ptr() == embed.data_ptr()
    scale = gain_reciprocal(final_norm(model).weight) if "head_normed" in variants else None
    # The source matrix each variant is computed from; a tied embedding is the head, so it is solved once.
    sources: dict[str, tuple[torch.Tensor, list[str]]] = {}
    for v in variants:
        key = "input" if v == "input" and not tied else "head"
        sources.setdefault(key, ((embed if key == "input" else head).detach(), []))[1].append(v)
    arrays = {
        v: ArraySpec(tuple((embed if v == "input" else head).shape), "float32", chunk_rows) for v in variants
    }

    timings: dict[str, float] = {}
    with StoreWriter(store_path, arrays, f"{FORMAT}|{model_id}", codec) as writer:
        pending = {v: set(writer.pending_chunks(v)) for v in variants}
        with BackgroundWriter(writer) as background:
            for key, (w, fed) in sources.items():
                todo = sorted(set().union(*(pending[v] for v in fed)))
                if not todo:
                    continue
                tic = time.perf_counter()
                g_inv = inverse_gram(gram(w, chunk_rows, device), f"{key} matrix of {model_id}")
                timings[f"{key}_gram"] = time.perf_counter() - tic
                tic = time.perf_counter()
                chunks = pinv_row_chunks(w, g_inv, chunk_rows, todo)
                for i, rows in progress(chunks, desc=f"bases {key}: chunks", total=len(todo), unit="chunk"):
                    for v in fed:
                        if i in pending[v]:
                            folded = rows * scale.to(rows.device) if v == "head_normed" else rows
                            background.submit(v, i, unit_rows(folded))
                timings[f"{key}_rows"] = time.perf_counter() - tic
        writer.finalize(
            {
                "kind": "semantic bases",
                "model": model_id,
                "vocab_size": int(head.shape[0]),
                "d_model": int(head.shape[1]),
                "variants": list(variants),
                "rows": "unit-norm rows of pinv(W)ᵀ",
            }  # no timings here: the store is a DVC out, and a rerun must write the same bytes
        )
    timings["total"] = time.perf_counter() - started
    return timings


@dataclass(frozen=True)
class VocabAlignment:
    """Token pairs shared by two vocabularies, in teacher row order: teacher row `teacher_index[k]` is student
    row `student_index[k]` (the same token string). `teacher_size`, `student_size`: rows of each model."""

    teacher_index: torch.Tensor  # [kept] int64, increasing
    student_index: torch.Tensor  # [kept] int64
    teacher_size: int
    student_size: int
    identical: bool  # the same token at every row: the index-aligned arithmetic applies unchanged

    @property
    def kept(self) -> int:
        return len(self.teacher_index)

    @property
    def share(self) -> float:
        """Shared tokens over the larger vocabulary."""
        return self.kept / max(self.teacher_size, self.student_size, 1)

    def summary(self) -> dict[str, int | float | bool]:
        """Row counts, shared tokens and their share, for the metrics."""
        return {
            "teacher_rows": self.teacher_size,
            "student_rows": self.student_size,
            "shared": self.kept,
            "share": round(self.share, 6),
            "identical": self.identical,
        }

    def teacher_to_student(self) -> torch.Tensor:
        """`[teacher_size]` int64: the student row of each teacher row's token, −1 where the student lacks
        it."""
        table = torch.full((self.teacher_size,), -1, dtype=torch.long)
        table[self.teacher_index] = self.student_index
        return table

    @cached_property
    def _table(self) -> torch.Tensor:
        return self.teacher_to_student()

    def student_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Teacher token ids (any shape) as student ids, −1 where the student lacks the token; negative
        entries (the −100 of unsupervised labels) stay as they are. Identical vocabularies: `ids` itself."""
        if self.identical:
            return ids
        return torch.where(ids >= 0, self._table[ids.clamp(min=0).long()].to(ids.dtype), ids)

    def student_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-tokenised `input_ids` `[N, T]` as the student's ids; padding (mask 0) the student lacks
        becomes id 0, a real token it lacks stops with its id named."""
        ids = self.student_ids(input_ids)
        absent = (ids < 0) & attention_mask.bool()
        if absent.any():
            raise SemalignError(
                f"{int(absent.sum())} tokens of the data (teacher id {int(input_ids[absent][0])} first) "
                "are not in the student's vocabulary, so the student cannot read the teacher-tokenised "
                "data; pick a student of the teacher's tokenizer family"
            )
        return ids.clamp(min=0)

    def save(self, path: str | Path) -> None:
        """As safetensors: both index columns, the two sizes and `identical`."""
        save_file(
            {
                "teacher_index": self.teacher_index.contiguous(),
                "student_index": self.student_index.contiguous(),
                "sizes": torch.tensor([self.teacher_size, self.student_size, int(self.identical)]),
            },
            str(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> VocabAlignment:
        tensors = load_file(str(path))
        teacher_size, student_size, identical = tensors["sizes"].tolist()
        return cls(
            tensors["teacher_index"], tensors["student_index"], teacher_size, student_size, bool(identical)
        )


def align_vocabularies(
    teacher_tokens: list[str], student_tokens: list[str], min_overlap: float = 0.9
) -> VocabAlignment:
    """Pair vocabulary rows by token string (index-aligned when the lists are identical).

    Raises when fewer than `min_overlap` of the larger vocabulary is shared (param align.min_vocab_overlap).
    """
    sizes = len(teacher_tokens), len(student_tokens)
    if teacher_tokens == student_tokens:
        index = torch.arange(len(teacher_tokens))
        return VocabAlignment(index, index.clone(), *sizes, True)
    student_row: dict[str, int] = {}
    for row, token in enumerate(student_tokens):
        student_row.setdefault(token, row)
    pairs = [(row, student_row[token]) for row, token in enumerate(teacher_tokens) if token in student_row]
    overlap = len(pairs) / max(*sizes, 1)
    if overlap < min_overlap:
        raise SemalignError(
            f"teacher ({sizes[0]} tokens) and student ({sizes[1]} tokens) share only {len(pairs)} tokens "
            f"({overlap:.1%} < align.min_vocab_overlap {min_overlap:.0%}): pick a student of the "
            "teacher's tokenizer family, or lower align.min_vocab_overlap in params.yaml to transfer on the "
            "shared tokens"
        )
    index = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    teacher_index, student_index = index[:, 0].contiguous(), index[:, 1].contiguous()
    return VocabAlignment(teacher_index, student_index, *sizes, False)


def vocabulary_tokens(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> list[str]:
    """The token string of every embedding row 0..vocab_size-1, in id order.

    Rows with no token (Qwen pads 151,665 tokens to 151,936 rows) are named `<|semalign_unused_<row>|>`, so
    two models padded alike align them index-wise.
    """
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise SemalignError(
            f"the tokenizer has ids up to {max(vocab.values())} but the model has only {vocab_size} "
            f"embedding rows; "
            "load the tokenizer saved with this model"
        )
    tokens = [f"<|semalign_unused_{row}|>" for row in range(vocab_size)]
    for token, row in vocab.items():
        tokens[row] = token
    return tokens


def match_tokenizers(
    teacher_dir: Path, student_dir: Path, teacher_rows: int, student_rows: int, min_overlap: float
) -> VocabAlignment:
    """The vocabulary map between the tokenizers of two model directories whose embeddings have
    `teacher_rows` and `student_rows` rows (`align_vocabularies` on their token strings)."""
    return align_vocabularies(
        vocabulary_tokens(load_tokenizer(teacher_dir), teacher_rows),
        vocabulary_tokens(load_tokenizer(student_dir), student_rows),
        min_overlap=min_overlap,
    )
