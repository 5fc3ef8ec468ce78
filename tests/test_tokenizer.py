"""The GPT-2 tokenizer from the shipped ranks (assets/gpt2.tiktoken): the same ids as tiktoken's own
r50k_base, no network, and a one-line error when neither the file nor the download is there."""

import os

import pytest

import tokenizer as tok
from configurator import UserError
from conftest import SHARED

TRICKY = ["", "Hello world", "  two  spaces\n\n\nand newlines \t", "don't we'll I'M", "3.14159 and 1,000,000",
          "naïve café 東京 🙂 \u200b", "<|endoftext|> is text here", "trailing space "]


@pytest.fixture
def fresh_encoding():
    """gpt2_encoding() built anew under a test's monkeypatches, and anew again afterwards."""
    tok.gpt2_encoding.cache_clear()
    yield
    tok.gpt2_encoding.cache_clear()


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, "tokenizers", "gpt2.tiktoken")),
                    reason="needs ../shared/tokenizers/gpt2.tiktoken for tiktoken's own r50k_base")
def test_shipped_ranks_encode_like_tiktokens_r50k_base(shakespeare_text, tmp_path, monkeypatch, fresh_encoding):
    import tiktoken
    import tiktoken.registry
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    ours = tok.GPT2Tokenizer()  # from assets/ alone
    cache = tmp_path / "cache"  # tiktoken's cache, named by the SHA-1 of its download URL
    cache.mkdir()
    (cache / "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4").symlink_to(os.path.join(SHARED, "tokenizers", "gpt2.tiktoken"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # tiktoken's own, read from that cache
    theirs = tiktoken.get_encoding("r50k_base")
    assert (ours.vocab_size, ours.eot_id) == (theirs.n_vocab, theirs.eot_token) == (50257, 50256)
    assert ours.enc._pat_str == theirs._pat_str and ours.enc._special_tokens == theirs._special_tokens
    assert ours.encode(shakespeare_text) == theirs.encode_ordinary(shakespeare_text)
    for text in TRICKY:
        assert ours.encode(text) == theirs.encode_ordinary(text), text
        assert ours.enc.encode(text, allowed_special="all") == theirs.encode(text, allowed_special="all"), text


def test_shipped_ranks_need_no_download(tmp_path, monkeypatch, fresh_encoding):
    import tiktoken
    import tiktoken.load

    def no_network(*args, **kwargs):
        raise ConnectionError("no network in this test")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    t = tok.GPT2Tokenizer()
    assert t.decode(t.encode("Once upon a time")) == "Once upon a time" and t.vocab_size == 50257
    assert os.listdir(tmp_path) == []  # and nothing written into tiktoken's cache


@pytest.mark.parametrize("content", [None, b"not the ranks\n"])
def test_no_ranks_and_no_download_is_a_one_line_error(tmp_path, monkeypatch, fresh_encoding, content):
    import tiktoken
    path = tmp_path / "gpt2.tiktoken"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setattr(tok, "GPT2_RANKS", str(path))

    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(UserError) as e:
        tok.GPT2Tokenizer()
    msg = str(e.value)
    assert "\n" not in msg and "git checkout assets/gpt2.tiktoken" in msg and "r50k_base.tiktoken" in msg
    assert ("is missing" if content is None else "sha256 differs") in msg
