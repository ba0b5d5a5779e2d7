"""Tokenizers of the text task: GPT-2's BPE (tiktoken, offline) and a byte-level BPE trained on the training split.

Contract: a `TextTokenizer` turns a string into a list of ids and back (`decode(encode(s)) == s` for any
string), knows its `vocab_size` and the id of its document separator `eot` ("<|endoftext|>").

- `gpt2`: the 50,257 ids of GPT-2 (`r50k_base`), read from a `.tiktoken` ranks file; no network.
- `bpe` (default): a byte-level BPE trained with HF `tokenizers` on the training works only, so the
  candidate state (batch x sequence x vocabulary) stays small on a CPU; its JSON is an artifact
  (`experiment.Artifacts`) keyed by a hash of the training texts and the vocabulary size.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ebt_forecast.errors import DataError

if TYPE_CHECKING:
    from ebt_forecast.experiment import Artifacts

EOT = "<|endoftext|>"
# GPT-2's pre-tokenisation pattern (tiktoken's r50k_base)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TextTokenizer(Protocol):
    name: str
    vocab_size: int
    eot: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class GPT2Tokenizer:
    """GPT-2 BPE through tiktoken, from a local ranks file."""

    def __init__(self, path: str | Path):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        path = Path(path)
        if not path.is_file():
            raise DataError(f"GPT-2 tokenizer file {str(path)!r} does not exist (text.gpt2_path)")
        try:
            ranks = load_tiktoken_bpe(str(path))
        except Exception as err:  # a file that is not a ranks file
            raise DataError(f"GPT-2 tokenizer file {str(path)!r} could not be read: {err}") from err
        self.encoding = tiktoken.Encoding(name="r50k_base", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                          special_tokens={EOT: len(ranks)})
        self.name, self.vocab_size, self.eot = "gpt2", self.encoding.n_vocab, len(ranks)

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(list(ids))


class ByteBPETokenizer:
    """A byte-level BPE (HF `tokenizers`): every byte is a token, so any string round-trips."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.name, self.vocab_size, self.eot = "bpe", tokenizer.get_vocab_size(), tokenizer.token_to_id(EOT)

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> "ByteBPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "ByteBPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        from ebt_forecast.io import atomic_write_text

        atomic_write_text(path, self.tokenizer.to_str())

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def texts_key(texts: list[str]) -> str:
    """A short hash of the training texts: what a trained tokenizer's key reads of them."""
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()[:12]


def make_tokenizer(kind: str, train_texts: list[str], vocab_size: int, gpt2_path: str, store: Artifacts,
                   threads: int = 1) -> TextTokenizer:
    """GPT-2 from its file, or a byte-level BPE trained on `train_texts` (trained once, an artifact of `store`)."""
    if kind == "gpt2":
        return GPT2Tokenizer(gpt2_path)

    def train(folder: Path) -> ByteBPETokenizer:
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))  # tokenizers' thread pool; read once, at first use
        tok = ByteBPETokenizer.train(train_texts, vocab_size)
        tok.save(folder / "tokenizer.json")
        return tok

    return store.get(f"bpe_{vocab_size}", {"texts": texts_key(train_texts), "vocab_size": vocab_size}, train,
                     lambda folder: ByteBPETokenizer.load(folder / "tokenizer.json"))
