from argparse import Namespace

from fairseq.data import encoders


def test_byte_bpe_round_trip_and_fairseq_symbols(data_bin):
    bpe = encoders.build_bpe(Namespace(bpe="energy_byte_bpe", bpe_vocab=str(data_bin / "vocab.json"),
                                       bpe_merges=str(data_bin / "merges.txt"),
                                       bpe_add_prefix_space=False))
    text = "Return the value of the attribute."
    ids = bpe.encode(text)
    assert all(s.isdigit() for s in ids.split()) and bpe.decode(ids) == text
    # symbols of fairseq's dictionary that are not BPE ids are kept, not int()-ed
    first, rest = ids.split()[0], " ".join(ids.split()[1:])
    assert bpe.decode(f"{first} </s>") == bpe.decode(first) + " </s>"
    assert bpe.decode(f"madeupword0001 {rest}") == "madeupword0001" + bpe.decode(rest)
    assert bpe.decode("<pad>") == "<pad>"
