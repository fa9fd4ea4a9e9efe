"""Instruction validation and tokenisation.

``ByteTokenizer`` is the reference network's tokenizer: UTF-8 bytes shifted by 4, with
pad 0, bos 1, eos 2, unk 3 (vocab 260). A sequence is ``bos, bytes..., eos``; when it does not fit
in ``max_tokens`` the bytes are cut and ``eos`` is kept as the last token, so the model always
sees a terminated sequence. A Hugging Face ``tokenizer.json`` can be used instead (the spec's
``instruction.tokenizer`` is then its path; the ``tokenizers`` package is imported lazily).

The spec's prompt template (e.g. OpenVLA's ``"In: What action should the robot take to
{instruction}?\\nOut:"``) is applied before tokenising. Length limits apply to the user's
instruction text (``max_chars`` characters), before the template: an over-long instruction is
rejected with InstructionError, never truncated silently. Truncation to ``max_tokens`` is the
model's context limit, applied after the template, and is reported by ``encode_into``.

Tokenising writes into caller-provided rows (int32 ids, float32 mask) so the preprocessor's
static buffers are filled without allocating.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from vla_accel.errors import InstructionError, SpecError

if TYPE_CHECKING:  # pragma: no cover
    from vla_accel.core.spec import InstructionSpec, ModelSpec


class Tokenizer(Protocol):
    """What the preprocessor needs from a tokenizer."""

    vocab_size: int
    max_tokens: int

    def encode_into(self, text: str, ids_row: np.ndarray, mask_row: np.ndarray) -> int:
        """Write ids and mask of the templated ``text`` into the rows; return the token count."""

    def needed_tokens(self, text: str) -> int:
        """Tokens the templated ``text`` needs untruncated (more than max_tokens: it will be cut)."""


def validate_instruction(text: object, spec: "ModelSpec | InstructionSpec") -> str:
    """Return ``text`` as a str if it is an acceptable instruction, else raise InstructionError.

    Reasons: missing_instruction (None), instruction_not_utf8 (bytes that do not decode, or a str
    holding lone surrogates), empty_instruction (empty or whitespace only), instruction_too_long
    (more than ``max_chars`` characters; the message gives the length and the limit).
    """
    ins = getattr(spec, "instruction", spec)
    if text is None:
        raise InstructionError("no instruction given (None); send one on the instruction topic",
                               reason="missing_instruction")
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InstructionError(f"instruction is not valid UTF-8: {exc}", reason="instruction_not_utf8") from exc
    if not isinstance(text, str):
        raise InstructionError(
            f"instruction must be text, got {type(text).__name__}", reason="missing_instruction"
        )
    if len(text) > ins.max_chars:
        raise InstructionError(
            f"instruction has {len(text)} characters; the limit is {ins.max_chars} "
            "(instruction.max_chars in the model spec)",
            reason="instruction_too_long",
        )
    if not text.strip():
        raise InstructionError("instruction is empty or whitespace only", reason="empty_instruction")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InstructionError(f"instruction is not valid UTF-8 text: {exc}", reason="instruction_not_utf8") from exc
    return text


def apply_template(template: str, instruction: str) -> str:
    """Insert the instruction into the prompt template (only ``{instruction}`` is substituted,
    so braces elsewhere in the template or in the instruction are kept literally)."""
    return template.replace("{instruction}", instruction)


class ByteTokenizer:
    """UTF-8 byte tokenizer: pad 0, bos 1, eos 2, unk 3, byte b -> b + 4 (vocab 260)."""

    PAD = 0
    BOS = 1
    EOS = 2
    UNK = 3
    OFFSET = 4
    vocab_size = 260

    def __init__(self, max_tokens: int = 32, prompt_template: str = "{instruction}"):
        if max_tokens < 2:
            raise SpecError(f"byte tokenizer needs max_tokens >= 2 (bos + eos), got {max_tokens}")
        self.max_tokens = int(max_tokens)
        self.prompt_template = prompt_template

    def encode_into(self, text: str, ids_row: np.ndarray, mask_row: np.ndarray) -> int:
        """Tokenise the templated ``text`` into ``ids_row`` (int32) and ``mask_row`` (float32).

        Positions past the sequence are set to pad / 0. Returns the token count written
        (<= max_tokens); the byte sequence was cut when the count equals max_tokens and
        ``len(utf8) + 2 > max_tokens``.
        """
        data = apply_template(self.prompt_template, text).encode("utf-8")
        limit = min(self.max_tokens, ids_row.shape[0])
        kept = min(len(data), limit - 2)
        count = kept + 2
        ids_row[0] = self.BOS
        if kept:
            np.add(np.frombuffer(data, dtype=np.uint8, count=kept), self.OFFSET, out=ids_row[1 : kept + 1],
                   casting="unsafe")
        ids_row[kept + 1] = self.EOS
        ids_row[count:] = self.PAD
        mask_row[:count] = 1.0
        mask_row[count:] = 0.0
        return count

    def needed_tokens(self, text: str) -> int:
        """Tokens the templated ``text`` needs untruncated (bos + bytes + eos)."""
        return len(apply_template(self.prompt_template, text).encode("utf-8")) + 2

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Allocating convenience: (ids int32 (max_tokens,), mask float32 (max_tokens,))."""
        ids = np.zeros(self.max_tokens, dtype=np.int32)
        mask = np.zeros(self.max_tokens, dtype=np.float32)
        self.encode_into(text, ids, mask)
        return ids, mask

    def decode(self, ids: np.ndarray) -> str:
        """Inverse of encode for the byte part: stops at eos, skips bos/pad, unk -> U+FFFD."""
        out = bytearray()
        for token in np.asarray(ids).tolist():
            if token == self.EOS:
                break
            if token in (self.PAD, self.BOS):
                continue
            if token == self.UNK or not (self.OFFSET <= token < self.vocab_size):
                out += "\ufffd".encode("utf-8")
                continue
            out.append(token - self.OFFSET)
        return out.decode("utf-8", errors="replace")


class HuggingFaceTokenizer:
    """A ``tokenizer.json`` (Hugging Face ``tokenizers``) behind the same ``encode_into`` API.

    Sequences longer than max_tokens are cut to max_tokens (the tokenizer's own post-processor
    decides about special tokens such as bos/eos).
    """

    def __init__(self, path: str | Path, max_tokens: int, prompt_template: str = "{instruction}", pad_id: int = 0):
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError as exc:
            raise SpecError(
                f"the model spec names the tokenizer file {path}, which needs the 'tokenizers' package: "
                "pip install tokenizers"
            ) from exc
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"tokenizer file not found: {path}")
        try:
            self._tokenizer = _HFTokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 (tokenizers raises a bare Exception for bad files)
            raise SpecError(f"tokenizer file {path} does not load: {exc}") from exc
        self.path = path
        self.max_tokens = int(max_tokens)
        self.prompt_template = prompt_template
        self.pad_id = int(pad_id)
        self.vocab_size = int(self._tokenizer.get_vocab_size())

    def encode_into(self, text: str, ids_row: np.ndarray, mask_row: np.ndarray) -> int:
        ids = self._tokenizer.encode(apply_template(self.prompt_template, text)).ids
        count = min(len(ids), self.max_tokens, ids_row.shape[0])
        ids_row[:count] = ids[:count]
        ids_row[count:] = self.pad_id
        mask_row[:count] = 1.0
        mask_row[count:] = 0.0
        return count

    def needed_tokens(self, text: str) -> int:
        """Tokens the templated ``text`` needs untruncated."""
        return len(self._tokenizer.encode(apply_template(self.prompt_template, text)).ids)

    def decode(self, ids: np.ndarray) -> str:
        return self._tokenizer.decode([int(i) for i in np.asarray(ids).tolist()])


def load_tokenizer(instruction: "InstructionSpec", base_dir: Path | None = None) -> ByteTokenizer | HuggingFaceTokenizer:
    """The tokenizer an InstructionSpec names: ``"byte"`` or a path to a tokenizer.json.

    Relative paths resolve against ``base_dir`` (the spec file's folder). Raises SpecError when the
    tokenizer's vocabulary does not fit the spec's ``vocab_size``.
    """
    name = instruction.tokenizer
    if name == "byte":
        if instruction.vocab_size < ByteTokenizer.vocab_size:
            raise SpecError(
                f"byte tokenizer needs instruction vocab_size >= {ByteTokenizer.vocab_size}, "
                f"spec has {instruction.vocab_size}"
            )
        return ByteTokenizer(instruction.max_tokens, instruction.prompt_template)
    path = Path(name)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    tokenizer = HuggingFaceTokenizer(path, instruction.max_tokens, instruction.prompt_template, instruction.pad_id)
    if tokenizer.vocab_size > instruction.vocab_size:
        raise SpecError(
            f"tokenizer {path} has {tokenizer.vocab_size} tokens, more than the spec's vocab_size "
            f"{instruction.vocab_size}"
        )
    return tokenizer
