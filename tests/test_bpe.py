"""Byte-level BPE: round trips, reference == fast path, GPT-2 == tiktoken, training, files."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import pytest
import tiktoken
from conftest import read_jsonl_texts
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt_jax.bpe import (
    EOT_TEXT,
    GPT2_ENV,
    GPT2_PATTERN,
    GPT2_RANKS_SHA256,
    Tokenizer,
    count_chunks,
)
from minigpt_jax.documents import iter_documents
from minigpt_jax.errors import DataError, TokenizerError

CLASSICS = ("austen", "shakespeare", "kjv", "web")


@pytest.fixture(scope="module")
def austen(shared_data) -> list[str]:
    return read_jsonl_texts(shared_data / "classics" / "austen.jsonl", limit=40)  # ~180 KB


@pytest.fixture(scope="module")
def tok(austen) -> Tokenizer:
    return Tokenizer.train(austen, vocab_size=1024)


@pytest.fixture(scope="module")
def gpt2(gpt2_tiktoken_path) -> Tokenizer:
    return Tokenizer.load(gpt2_tiktoken_path)


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_tiktoken_path) -> tiktoken.Encoding:
    """GPT-2 built by tiktoken's own loader, as ../shared/data/README.md explains."""
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = load_tiktoken_bpe(str(gpt2_tiktoken_path), expected_hash=GPT2_RANKS_SHA256)
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: 50256}, explicit_n_vocab=50257)


def naive_ranks(docs: list[str], num_ranks: int) -> dict[bytes, int]:
    """minbpe's algorithm with our tie-break: recount every pair before every merge (obvious)."""
    words = Counter(tuple(c) for c in count_chunks(docs, GPT2_PATTERN).elements())
    vocab = [bytes([b]) for b in range(256)]
    ids = {t: i for i, t in enumerate(vocab)}
    while len(vocab) < num_ranks:
        stats: Counter[tuple[int, int]] = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:], strict=False):
                stats[pair] += n
        if not stats:
            break
        a, b = min(stats, key=lambda p: (-stats[p], p))
        token = vocab[a] + vocab[b]
        if token not in ids:
            ids[token] = len(vocab)
            vocab.append(token)
        new, merged = ids[token], Counter()
        for word, n in words.items():
            out, j = [], 0
            while j < len(word):
                if j + 1 < len(word) and (word[j], word[j + 1]) == (a, b):
                    out.append(new)
                    j += 2
                else:
                    out.append(word[j])
                    j += 1
            merged[tuple(out)] += n
        words = merged
    return ids


# ---------------------------------------------------------------------------------------------
# Round trips and encoder agreement

# Pieces that stress the pre-split and UTF-8: whitespace runs, combining marks, CJK, emoji.
unicode_soup = st.lists(
    st.sampled_from(
        list("ab Z09 \t\n\r'-.") + ["é", "e\u0301", "ñ", "日", "本", "語", "한", "😀", "👍🏽",
                                   "👩\u200d👩\u200d👧", "\u0301", "\u00a0", "\u3000", "\x00"]
    )
).map("".join)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(), unicode_soup))
def test_round_trip_and_encoders_agree(tok, gpt2, text):
    for t in (tok, gpt2):
        ids = t.encode(text)
        assert t.decode(ids) == text
        assert t.encode_reference(text) == ids
        assert t.encode_array(text).tolist() == ids  # the data-prep path
        assert all(0 <= i < t.vocab_size and i != t.eot_id for i in ids)


@pytest.mark.parametrize(
    "text",
    ["", " ", "\n\n\n", "   \t  x   ", "e\u0301\u0302", "👩\u200d👩\u200d👧\u200d👦",
     "日本語のテキスト", "\U0010ffff\x00", "don't   stop\r\n\r\n", EOT_TEXT],
)
def test_round_trip_examples(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_reference(text) == ids
    assert tok.encode_batch([text, text]) == [ids, ids]
    assert tok.encode_array(text).tolist() == ids  # <|endoftext|> in text stays text here too


def test_endoftext_in_text_is_ordinary_text(tok, gpt2):
    assert tok.eot_id not in tok.encode(f"a{EOT_TEXT}b")
    assert gpt2.encode(EOT_TEXT) != [50256]
    assert gpt2.decode([50256]) == EOT_TEXT


def test_decode_is_exact_for_any_bytes(tok):
    assert tok.decode_bytes(range(256)) == bytes(range(256))
    snowman = tok.encode("☃")
    assert tok.decode_bytes(snowman) == "☃".encode()
    cut = tok.decode_bytes(snowman)[:2]  # half a character decodes to U+FFFD, never raises
    assert tok.decode([cut[0], cut[1]]) == "\ufffd"


def test_reference_and_fast_agree_on_held_out_text(tok, shared_data):
    texts = read_jsonl_texts(shared_data / "classics" / "web.jsonl", limit=10)
    assert [tok.encode_reference(t) for t in texts] == tok.encode_batch(texts)


# ---------------------------------------------------------------------------------------------
# GPT-2


def test_gpt2_identity_and_known_ids(gpt2):
    assert gpt2.identity == {"name": "gpt2", "sha256": GPT2_RANKS_SHA256, "vocab_size": 50257,
                             "eot_id": 50256}
    assert gpt2.encode("Hello world") == [15496, 995]


def test_gpt2_matches_tiktoken_on_classics(gpt2, tiktoken_gpt2, shared_data):
    for name in CLASSICS:
        texts = read_jsonl_texts(shared_data / "classics" / f"{name}.jsonl", limit=150)
        expected = tiktoken_gpt2.encode_ordinary_batch(texts)
        assert gpt2.encode_batch(texts) == expected, name
        # The pure-Python encoder on GPT-2's real ranks gives tiktoken's ids too.
        for text, ids in zip(texts[:2], expected[:2], strict=True):
            assert gpt2.encode_reference(text) == ids, name


@pytest.mark.slow
def test_gpt2_matches_tiktoken_on_all_classics(gpt2, tiktoken_gpt2, shared_data):
    for name in CLASSICS:  # ~18 MB in all
        texts = read_jsonl_texts(shared_data / "classics" / f"{name}.jsonl")
        assert gpt2.encode_batch(texts) == tiktoken_gpt2.encode_ordinary_batch(texts), name


def test_gpt2_constructor_offline(gpt2_tiktoken_path, tok, tmp_path, monkeypatch):
    assert Tokenizer.gpt2(gpt2_tiktoken_path).identity["sha256"] == GPT2_RANKS_SHA256
    monkeypatch.setenv(GPT2_ENV, str(gpt2_tiktoken_path))
    from minigpt_jax.tokenizer import load_tokenizer

    assert load_tokenizer("gpt2").identity["name"] == "gpt2"
    # A rank file that is not GPT-2's is refused by name.
    other = tmp_path / "other.tiktoken"
    tok.save_tiktoken(other)
    with pytest.raises(TokenizerError, match="other.tiktoken"):
        Tokenizer.gpt2(other)


def test_gpt2_without_network_says_what_to_do(monkeypatch):
    import requests

    def no_network(name):
        raise requests.exceptions.ConnectionError("Name or service not known")

    monkeypatch.delenv(GPT2_ENV, raising=False)
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    with pytest.raises(RuntimeError, match="gpt2.tiktoken"):
        Tokenizer.gpt2()


# ---------------------------------------------------------------------------------------------
# Training


def test_first_merges_hand_computed():
    # aa (count 4) first; then (aa,a) and (a,b) tie at 2 and the smaller ids (97, 98) win.
    t = Tokenizer.train(["aaabdaaabac"], vocab_size=256 + 3 + 1)
    merged = sorted((r, b) for b, r in t.ranks.items() if r >= 256)
    assert merged == [(256, b"aa"), (257, b"ab"), (258, b"aaab")]
    assert t.vocab_size == 260 and t.eot_id == 259


def test_ties_broken_by_smallest_ids_whatever_the_order():
    for docs in (["cd", "ab"], ["ab", "cd"]):
        t = Tokenizer.train(docs, vocab_size=256 + 1 + 1)
        assert [b for b, r in t.ranks.items() if r == 256] == [b"ab"]


def test_incremental_trainer_equals_recounting_trainer(austen):
    docs = austen[:6]  # ~25 KB
    assert Tokenizer.train(docs, vocab_size=601).ranks == naive_ranks(docs, 600)


def test_first_merges_match_hf_tokenizers(austen):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 40, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(austen, trainer=trainer)
    merges = json.loads(hf.to_str())["model"]["merges"]
    byte_of = _byte_level_decoder()
    hf_tokens = [b"".join(bytes(byte_of[c] for c in part) for part in
                          (m.split(" ") if isinstance(m, str) else m)) for m in merges]
    ours = Tokenizer.train(austen, vocab_size=256 + 40 + 1)
    assert [b for b, _ in sorted(ours.ranks.items(), key=lambda kv: kv[1])][256:] == hf_tokens


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, inverted (as in HF's ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def test_vocab_size_and_special_tokens(austen):
    t = Tokenizer.train(austen[:5], vocab_size=400, special_tokens=(EOT_TEXT, "<|pad|>"))
    assert t.vocab_size == 400 and len(t.ranks) == 398
    assert t.special_tokens == {EOT_TEXT: 398, "<|pad|>": 399} and t.eot_id == 398
    assert t.to_tiktoken().n_vocab == 400
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(["x"], vocab_size=200)


def test_gpt4_pattern_splits_digits_in_threes(austen):
    t = Tokenizer.train(austen[:5] + ["1234567 " * 50], vocab_size=500, pattern="gpt4")
    pieces = [t.decode([i]) for i in t.encode("1234567")]
    assert "".join(pieces) == "1234567" and all(len(p) <= 3 for p in pieces)
    assert t.encode_reference("Don'T 12345 x\r\n\r\ny") == t.encode("Don'T 12345 x\r\n\r\ny")


def test_iter_documents_reads_each_format(austen, tmp_path):
    docs = austen[:4]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    (tmp_path / "a.txt").write_text(docs[0])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs}), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.parquet"):
        assert list(iter_documents([tmp_path / name], text_field="body")) == docs
    assert list(iter_documents([tmp_path / "a.txt"])) == docs[:1]
    for name in ("a.jsonl", "a.parquet"):
        with pytest.raises(DataError, match=name.replace(".", r"\.") + ": no field 'text'"):
            list(iter_documents([tmp_path / name]))


def test_train_script(tmp_path, capsys, shared_data):
    from minigpt_jax import train_tokenizer as script

    out = tmp_path / "tok.json"
    t = script.main(["--input", str(shared_data / "classics" / "kjv.jsonl"), "--vocab_size", "300",
              "--out", str(out), "--heldout_mb", "0.05"])
    printed = capsys.readouterr().out
    assert "bytes per token" in printed
    assert Tokenizer.load(out).identity == t.identity
    with pytest.raises(SystemExit) as e:
        script.main(["--input", str(tmp_path / "missing.jsonl"), "--vocab_size", "300",
                     "--out", str(tmp_path / "never.json")])
    assert e.value.code == 2
    assert "missing.jsonl: input file not found" in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()


# ---------------------------------------------------------------------------------------------
# Files


def test_save_load_same_ids(tok, gpt2, austen, tmp_path):
    text = austen[-1][:3000]
    for t in (tok, gpt2):
        t.save(tmp_path / "t.json")
        back = Tokenizer.load(tmp_path / "t.json")
        assert back.identity == t.identity and back.encode(text) == t.encode(text)
        t.save_tiktoken(tmp_path / "t.tiktoken")
        back = Tokenizer.load(tmp_path / "t.tiktoken")
        assert back.ranks == t.ranks and back.encode(text) == t.encode(text)
        assert pickle.loads(pickle.dumps(t)).encode(text) == t.encode(text)
    assert Tokenizer.load(tmp_path / "t.tiktoken").identity["sha256"] == GPT2_RANKS_SHA256
    saved = (tmp_path / "t.json").read_text()
    assert '"version": 1' in saved and '[220, 83, " t"]' in saved  # readable: GPT-2's first merge


def _damaged(tok: Tokenizer, tmp_path) -> dict[str, bytes]:
    tok.save(tmp_path / "good.json")
    good = (tmp_path / "good.json").read_text()
    tok.save_tiktoken(tmp_path / "good.tiktoken")
    ranks = (tmp_path / "good.tiktoken").read_bytes()
    return {
        "empty.json": b"",
        "truncated.json": good[: len(good) // 2].encode(),
        "foreign.json": b'{"model": {"type": "BPE"}}',
        "future.json": good.replace('"version": 1', '"version": 99').encode(),
        "tampered.json": good.replace(' t"]', ' x"]', 1).encode(),
        "dangling.json": good.replace("[32, 116,", "[32, 99999,", 1).encode(),
        "badpattern.json": good.replace('"pattern": "', '"pattern": "(', 1).encode(),
        "bad_base64.tiktoken": b"A@A= 0\n" + ranks.split(b"\n", 1)[1],
        "missing_byte.tiktoken": b"\n".join(ranks.splitlines()[1:]),
        "binary.tiktoken": bytes(range(256)) * 4,
    }


def test_bad_files_rejected_with_their_name(tok, tmp_path):
    for name, data in _damaged(tok, tmp_path).items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(TokenizerError, match=name.replace(".", r"\.")):
            Tokenizer.load(tmp_path / name)
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")
