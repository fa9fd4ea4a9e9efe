"""core.tokenizer: byte tokenizer layout and round trip, templates, instruction validation."""
from __future__ import annotations

import numpy as np
import pytest

from vla_accel.core.spec import InstructionSpec
from vla_accel.core.tokenizer import ByteTokenizer, load_tokenizer, validate_instruction
from vla_accel.errors import InstructionError, SpecError


def test_byte_layout_is_bos_bytes_eos_pad():
    tok = ByteTokenizer(max_tokens=8)
    ids = np.full(8, 99, dtype=np.int32)
    mask = np.full(8, 7.0, dtype=np.float32)
    count = tok.encode_into("ab", ids, mask)
    assert count == 4
    assert ids.tolist() == [1, ord("a") + 4, ord("b") + 4, 2, 0, 0, 0, 0]
    assert mask.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_round_trip_unicode():
    tok = ByteTokenizer(max_tokens=64)
    text = "put the tasse in the Schüssel ✓"
    ids, mask = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(mask.sum()) == len(text.encode("utf-8")) + 2
    assert ids.dtype == np.int32 and mask.dtype == np.float32
    assert ids.max() < tok.vocab_size


def test_truncation_keeps_eos():
    tok = ByteTokenizer(max_tokens=6)
    ids, mask = tok.encode("abcdefgh")
    assert ids.tolist() == [1, 101, 102, 103, 104, 2]
    assert mask.tolist() == [1] * 6
    assert tok.decode(ids) == "abcd"


def test_encode_into_writes_in_place_and_clears_previous_content():
    tok = ByteTokenizer(max_tokens=10)
    ids = np.zeros(10, dtype=np.int32)
    mask = np.zeros(10, dtype=np.float32)
    tok.encode_into("a long instruction", ids, mask)
    before = ids.__array_interface__["data"][0]
    tok.encode_into("go", ids, mask)
    assert ids.__array_interface__["data"][0] == before
    assert ids.tolist() == [1, ord("g") + 4, ord("o") + 4, 2, 0, 0, 0, 0, 0, 0]
    assert mask.sum() == 4


def test_prompt_template_is_applied():
    spec = InstructionSpec(max_tokens=64, prompt_template="In: {instruction}?\nOut:")
    tok = load_tokenizer(spec)
    ids, _ = tok.encode("grab {it}")
    assert tok.decode(ids) == "In: grab {it}?\nOut:"


def test_byte_tokenizer_needs_vocab_260():
    with pytest.raises(SpecError):
        load_tokenizer(InstructionSpec(vocab_size=100))


def test_hugging_face_tokenizer_path(tmp_path):
    tokenizers = pytest.importorskip(
        "tokenizers", reason="missing: tokenizers (optional); install with pip install tokenizers"
    )
    from tokenizers import models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "pick": 2, "up": 3, "the": 4, "cup": 5}
    hf = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    tok = load_tokenizer(InstructionSpec(tokenizer=str(path), max_tokens=4, vocab_size=6))
    ids = np.zeros(4, np.int32)
    mask = np.zeros(4, np.float32)
    assert tok.encode_into("pick up the cup now", ids, mask) == 4
    assert ids.tolist() == [2, 3, 4, 5] and mask.tolist() == [1, 1, 1, 1]
    with pytest.raises(SpecError):
        load_tokenizer(InstructionSpec(tokenizer=str(path), vocab_size=3))


def test_missing_tokenizer_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as info:
        load_tokenizer(InstructionSpec(tokenizer=str(tmp_path / "nope.json")))
    assert "tokenizer" in str(info.value)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty_instruction"),
        ("   \n\t", "empty_instruction"),
        (None, "missing_instruction"),
        (b"\xff\xfe not utf8", "instruction_not_utf8"),
        ("lone \udcff surrogate", "instruction_not_utf8"),
    ],
)
def test_invalid_instructions(text, reason):
    with pytest.raises(InstructionError) as info:
        validate_instruction(text, InstructionSpec())
    assert info.value.reason == reason


def test_100kb_instruction_is_rejected_with_length_and_limit():
    spec = InstructionSpec(max_chars=1024)
    text = "x" * 100_000
    with pytest.raises(InstructionError) as info:
        validate_instruction(text, spec)
    assert info.value.reason == "instruction_too_long"
    assert "100000" in str(info.value) and "1024" in str(info.value)
    assert validate_instruction("x" * 1024, spec) == "x" * 1024


def test_valid_bytes_instruction_is_decoded():
    assert validate_instruction("wipe the table".encode(), InstructionSpec()) == "wipe the table"
