"""`energy-lm-prepare`: text corpora to binarized fairseq data (`data-bin/`).

    energy-lm-prepare embedded    --out DIR                      # the embedded corpus
    energy-lm-prepare debian      --out DIR [--debs-dir DEBS]    # ~3M words from Debian
    energy-lm-prepare kjv         --out DIR [--debs-dir DEBS]    # the King James Bible (0.8M)
    energy-lm-prepare wikitext103 --out DIR --raw-dir RAW --gpt2-dir GPT2
    energy-lm-prepare wikitext103 --out DIR --download            # fetch raw + GPT-2 BPE
    energy-lm-prepare pile        --out DIR --train A.jsonl.zst --valid V.jsonl.zst \\
                                  --test T.jsonl.zst --gpt2-dir GPT2
    energy-lm-prepare text        --out DIR --train A.txt --valid V.jsonl --tokenizer-from M

`--tokenizer-from M` (text, and instead of the GPT-2 files for wikitext103 and pile)
encodes with the tokenizer of a model imported by energy-lm-from-hf into M and binarizes
with its dict.txt, so the data fits that model; data-bin/ then carries the tokenizer files.

Each writes DIR/text/{split}.bpe (one document per line, BPE ids) and binarizes them
with `fairseq-preprocess --only-source` into DIR/data-bin. One document per line
keeps documents intact for `--sample-break-mode complete_doc` and for packed-document
attention (`--task energy_language_modeling --document-attention`).
"""

import argparse
import io
import json
import logging
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional

from energy_lm.data import bpe
from energy_lm.data.errors import PrepareError

logger = logging.getLogger("energy_lm.prepare")

SPLITS = ("train", "valid", "test")
WIKITEXT103_URL = "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-raw-v1.zip"
GPT2_BPE_URLS = {
    "encoder.json": "https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe/encoder.json",
    "vocab.bpe": "https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe/vocab.bpe",
}


def download(url: str, dest: Path) -> Path:
    """Fetch url (http(s) or file://) to dest, unless dest exists already."""
    if dest.exists():
        logger.info("using %s (already downloaded)", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s -> %s", url, dest)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as err:
        raise PrepareError(f"download of {url} failed: {err}") from err
    tmp.rename(dest)
    return dest


def binarize(bpe_files: Dict[str, Path], dest: Path, workers: int = 1,
             srcdict: Optional[Path] = None) -> Path:
    """Run the real `fairseq-preprocess --only-source` on {split}.bpe files."""
    # with --only-source and no --source-lang, fairseq-preprocess reads each prefix as
    # the exact file name
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--only-source",
           "--trainpref", str(bpe_files["train"]), "--destdir", str(dest),
           "--workers", str(workers)]
    for split, flag in (("valid", "--validpref"), ("test", "--testpref")):
        if split in bpe_files:
            cmd += [flag, str(bpe_files[split])]
    if srcdict is not None:
        cmd += ["--srcdict", str(srcdict)]
    logger.info("binarizing: %s", " ".join(cmd))
    if dest.exists():  # a staging folder reused after a failed attempt
        shutil.rmtree(dest)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PrepareError("fairseq-preprocess failed:\n" + result.stderr[-2000:])
    return dest


def _encode_splits(documents: Dict[str, Iterable[str]], encode, text_dir: Path) -> Dict[str, Path]:
    """Write text_dir/{split}.bpe. All or nothing: each split goes to a .part file,
    renamed only when every split is complete, so a failure (bad input, an empty split)
    leaves no half-written output behind."""
    text_dir.mkdir(parents=True, exist_ok=True)
    parts = {split: text_dir / f"{split}.bpe.part" for split in documents}
    try:
        for split, docs in documents.items():
            count = bpe.write_bpe_lines(docs, encode, parts[split])
            logger.info("%s: %d documents", split, count)
            if count == 0:
                raise PrepareError(f"no documents in the {split} split")
    except BaseException:
        for part in parts.values():
            part.unlink(missing_ok=True)
        raise
    files = {split: part.with_suffix("") for split, part in parts.items()}
    for split, part in parts.items():
        part.replace(files[split])
    return files


def utf8_lines(stream, name) -> Iterator[str]:
    """The lines of a binary stream, decoded as strict UTF-8; invalid bytes stop with
    one line naming the file, the line and the byte."""
    for lineno, raw in enumerate(stream, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PrepareError(f"{name}: line {lineno} is not UTF-8 text (byte {err.start} of "
                               f"the line: {raw[err.start:err.start + 1]!r})") from None


# ---------------------------------------------------------------- embedded corpus
def prepare_embedded(out: Path, vocab_size: int = 2000, max_documents: int = 0,
                     workers: int = 1) -> Path:
    from energy_lm.data import embedded_corpus

    raw = embedded_corpus.write_splits(out / "raw", max_documents=max_documents)
    return _own_bpe_data_bin(raw, out, vocab_size, workers)


def _own_bpe_data_bin(raw: Dict[str, Path], out: Path, vocab_size: int, workers: int) -> Path:
    """raw {split}.txt (one document per line) -> a byte-level BPE trained on train,
    OUT/text/{split}.bpe and OUT/data-bin, which travels with its BPE files."""
    bpe_dir = bpe.train_byte_level_bpe(raw["train"], out / "bpe", vocab_size=vocab_size)
    encode = bpe.byte_level_encoder(bpe_dir)
    docs = {split: path.read_text(encoding="utf-8").splitlines() for split, path in raw.items()}
    files = _encode_splits(docs, encode, out / "text")
    data_bin = binarize(files, out / "data-bin", workers=workers)
    for name in (bpe.VOCAB_FILE, bpe.MERGES_FILE):
        shutil.copy(bpe_dir / name, data_bin / name)
    return data_bin


# ---------------------------------------------------------------- Debian text packages
def prepare_debian(out: Path, debs_dir: Optional[Path] = None, vocab_size: int = 8000,
                   workers: int = 1, packages=None) -> Path:
    """English prose from Debian packages (energy_lm.data.debian_corpus), own BPE."""
    from energy_lm.data import debian_corpus

    raw = debian_corpus.write_splits(out, packages or debian_corpus.PACKAGES, debs_dir)
    return _own_bpe_data_bin(raw, out, vocab_size, workers)


# ---------------------------------------------------------------- the King James Bible
def prepare_kjv(out: Path, debs_dir: Optional[Path] = None, vocab_size: int = 8000,
                workers: int = 1) -> Path:
    """A held-out corpus (energy_lm.data.kjv_corpus), own BPE."""
    from energy_lm.data import kjv_corpus

    raw = kjv_corpus.write_splits(out, debs_dir)
    return _own_bpe_data_bin(raw, out, vocab_size, workers)


# ---------------------------------------------------------------- WikiText-103
def wikitext_articles(lines: Iterable[str]) -> Iterator[str]:
    """Split a wiki.*.raw file into articles: a top-level heading ` = Title = ` starts
    one; section headings (` = = ... = = `) stay inside. Text is kept as it is."""
    article: List[str] = []
    for line in lines:
        stripped = line.strip()
        is_title = (stripped.startswith("= ") and stripped.endswith(" =")
                    and not stripped.startswith("= ="))
        if is_title and any(part.strip() for part in article):
            yield "".join(article).strip("\n")
            article = []
        article.append(line)
    if any(part.strip() for part in article):
        yield "".join(article).strip("\n")


def _wikitext_raw_files(raw_dir: Path) -> Dict[str, Path]:
    files = {split: raw_dir / f"wiki.{split}.raw" for split in SPLITS}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise PrepareError(f"WikiText-103 raw files not found: {', '.join(missing)}")
    return files


def fetch_wikitext103(cache: Path, url: str = WIKITEXT103_URL) -> Path:
    archive = download(url, cache / "wikitext-103-raw-v1.zip")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(cache)
    return cache / "wikitext-103-raw"


def fetch_gpt2_bpe(cache: Path, urls: Dict[str, str] = GPT2_BPE_URLS) -> Path:
    for name, url in urls.items():
        download(url, cache / name)
    return cache


def prepare_wikitext103(out: Path, raw_dir: Path, encode, workers: int = 1,
                        srcdict: Optional[Path] = None) -> Path:
    raw = _wikitext_raw_files(raw_dir)
    docs = {split: wikitext_articles(utf8_lines(open(path, "rb"), path))
            for split, path in raw.items()}
    return binarize(_encode_splits(docs, encode, out / "text"), out / "data-bin",
                    workers=workers, srcdict=srcdict)


# ---------------------------------------------------------------- the Pile
def pile_documents(path: Path, max_documents: int = 0) -> Iterator[str]:
    """Texts of a Pile shard (`.jsonl.zst`, or `.jsonl`): one JSON object a line with
    a "text" field."""
    if path.suffix == ".zst":
        import zstandard

        stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
    else:
        stream = open(path, "rb")
    with stream:
        for count, line in enumerate(utf8_lines(stream, path)):
            if max_documents and count >= max_documents:
                break
            if line.strip():
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise PrepareError(f"{path}: line {count + 1} is not a JSON object with a "
                                       f"\"text\" field ({type(err).__name__}: {err})") from None
                if text.strip():
                    yield text


def prepare_pile(out: Path, shards: Dict[str, List[Path]], encode, workers: int = 1,
                 max_documents: int = 0, srcdict: Optional[Path] = None) -> Path:
    docs = {split: (doc for path in paths for doc in pile_documents(path, max_documents))
            for split, paths in shards.items() if paths}
    if "train" not in docs:
        raise PrepareError("the Pile needs at least one --train shard")
    return binarize(_encode_splits(docs, encode, out / "text"), out / "data-bin",
                    workers=workers, srcdict=srcdict)


# ---------------------------------------------------------------- plain text or JSONL
def text_documents(path: Path) -> Iterator[str]:
    """One document per line of a .txt file (empty lines skipped), or the "text" field
    of each line of a .jsonl / .jsonl.zst file."""
    if not path.is_file():
        raise PrepareError(f"{path}: no such file")
    if path.name.endswith((".jsonl", ".jsonl.zst")):
        yield from pile_documents(path)
        return
    with open(path, "rb") as stream:
        for line in utf8_lines(stream, path):
            line = line.rstrip("\r\n")
            if line.strip():
                yield line


def prepare_text(out: Path, shards: Dict[str, List[Path]], tokenizer_from: Path,
                 workers: int = 1) -> Path:
    encode, srcdict = tokenizer_encoder(tokenizer_from)
    docs = {split: (doc for path in paths for doc in text_documents(path))
            for split, paths in shards.items() if paths}
    missing = [split for split in ("train", "valid") if split not in docs]
    if missing:
        raise PrepareError(f"text needs --{' and --'.join(missing)} files")
    return binarize(_encode_splits(docs, encode, out / "text"), out / "data-bin",
                    workers=workers, srcdict=srcdict)


# ---------------------------------------------------------------- an imported model's tokenizer
# what travels from the model folder into data-bin/: the tokenizer as transformers and
# as fairseq's hub BPE read it, and the id <-> symbol map
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt")


def tokenizer_encoder(folder: Path):
    """(text -> dictionary symbols, dict.txt) of a folder made by energy-lm-from-hf."""
    from tokenizers import Tokenizer

    from energy_lm.data.hf_vocabulary import DICT_FILE, MAP_FILE, VocabularyMap

    folder = Path(folder)
    missing = [name for name in ("tokenizer.json", DICT_FILE, MAP_FILE)
               if not (folder / name).is_file()]
    if missing:
        raise PrepareError(f"--tokenizer-from {folder}: no {', '.join(missing)} (a folder "
                           f"made by energy-lm-from-hf has them)")
    vocab = VocabularyMap.load(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    prefix = list(vocab.document_prefix)  # a document starts as the source was trained

    def encode(text: str) -> List[str]:
        return vocab.symbols(prefix + tokenizer.encode(text, add_special_tokens=False).ids)

    return encode, folder / DICT_FILE


def copy_tokenizer_files(folder: Path, data_bin: Path) -> None:
    from energy_lm.data.hf_vocabulary import MAP_FILE

    for name in TOKENIZER_FILES + (MAP_FILE,):
        if (folder / name).is_file():
            shutil.copy(folder / name, data_bin / name)


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="energy-lm-prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="corpus", required=True)

    def common(p):
        p.add_argument("--out", type=Path, required=True,
                       help="output directory (built in OUT.partial, renamed on success)")
        p.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
        p.add_argument("--force", action="store_true",
                       help="rebuild OUT even if it holds a corpus made with other arguments")

    p = sub.add_parser("embedded", help="the embedded default corpus (stdlib prose)")
    common(p)
    p.add_argument("--vocab-size", type=int, default=2000,
                   help="BPE vocabulary (small: the corpus has ~0.4M words)")
    p.add_argument("--max-documents", type=int, default=0, help="0 = all")

    p = sub.add_parser("debian", help="English prose from Debian packages (python3.11-doc, "
                       "wordnet-base, fortunes): ~3M words, fetched with apt-get download")
    common(p)
    p.add_argument("--debs-dir", type=Path, help="use these .deb files instead of apt-get download")
    p.add_argument("--packages", nargs="+", default=None, help="a subset of the packages")
    p.add_argument("--vocab-size", type=int, default=8000)

    p = sub.add_parser("kjv", help="the King James Bible from Debian (bible-kjv, bible-kjv-text): "
                       "~0.8M words of narrative prose, one document per chapter")
    common(p)
    p.add_argument("--debs-dir", type=Path, help="use these .deb files instead of apt-get download")
    p.add_argument("--vocab-size", type=int, default=8000)

    p = sub.add_parser("text", help="your own text (.txt: one document per line; .jsonl or "
                       ".jsonl.zst: a \"text\" field per line) with an imported model's tokenizer")
    common(p)
    for split in SPLITS:
        p.add_argument(f"--{split}", type=Path, nargs="+", default=[],
                       help=f"{split} file(s)" + (" (optional)" if split == "test" else ""))
    p.add_argument("--tokenizer-from", type=Path, required=True,
                   help="a folder made by energy-lm-from-hf: its tokenizer and dict.txt")

    for name in ("wikitext103", "pile"):
        p = sub.add_parser(name, help=f"{name} with GPT-2 BPE (or an imported model's tokenizer)")
        common(p)
        p.add_argument("--gpt2-dir", type=Path, help="folder with encoder.json and vocab.bpe")
        p.add_argument("--tokenizer-from", type=Path,
                       help="a folder made by energy-lm-from-hf: encode with its tokenizer and "
                            "dict.txt instead of GPT-2's files")
        p.add_argument("--download-gpt2", action="store_true",
                       help="download GPT-2's encoder.json/vocab.bpe into OUT/gpt2")
        p.add_argument("--srcdict", type=Path, help="existing fairseq dict.txt to reuse")
        if name == "wikitext103":
            p.add_argument("--raw-dir", type=Path, help="folder with wiki.{train,valid,test}.raw")
            p.add_argument("--download", action="store_true", help="download WikiText-103 (raw)")
            p.add_argument("--url", default=WIKITEXT103_URL, help="where --download fetches from")
        else:
            for split in SPLITS:
                p.add_argument(f"--{split}", type=Path, nargs="+", default=[],
                               help=f"{split} shard(s), .jsonl.zst or .jsonl")
            p.add_argument("--max-documents", type=int, default=0,
                           help="per shard, 0 = all")
    return parser


RECORD = "prepare.json"  # the arguments a finished corpus was made with


def _record(args) -> Dict[str, str]:
    """What identifies a corpus: every argument but the worker count and --force."""
    return {key: str(value.resolve() if isinstance(value, Path) else
                     [str(v) for v in value] if isinstance(value, list) else value)
            for key, value in sorted(vars(args).items()) if key not in ("workers", "force", "out")}


def build_atomically(out: Path, record: Dict[str, str], force: bool, build) -> Optional[Path]:
    """Run build(staging) -> staging/data-bin in `OUT.partial`, then rename it to OUT.

    The same arguments into a finished corpus: nothing to do (returns None). Other
    arguments, or a folder that is no corpus of ours: refused unless force. A failed
    build leaves OUT as it was; its staging folder (downloads included) is reused by the
    next attempt."""
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        recorded = out / RECORD
        previous = json.loads(recorded.read_text()) if recorded.is_file() else None
        finished = (out / "data-bin" / "dict.txt").is_file()
        if finished and previous == record:
            return None
        if not force:
            if previous is None or not finished:
                raise PrepareError(f"{out} exists and holds no corpus made by energy-lm-prepare; "
                                   f"--force replaces it")
            changed = sorted(k for k in set(record) | set(previous)
                             if record.get(k) != previous.get(k))
            raise PrepareError(f"{out} holds a corpus made with other arguments ({', '.join(changed)}"
                               f" differ); --force rebuilds it, or choose another --out")
    staging = out.with_name(out.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    build(staging)
    (staging / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    promote(staging, out)
    return out / "data-bin"


def promote(staging: Path, out: Path) -> None:
    """A finished staging folder becomes OUT by renames: an old OUT is moved aside first
    and removed last, so OUT is at every moment the old folder or the new one."""
    if out.exists():
        old = out.with_name(out.name + ".replaced")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def _build(args, out: Path) -> Path:
    if args.corpus == "embedded":
        return prepare_embedded(out, args.vocab_size, args.max_documents, args.workers)
    if args.corpus == "debian":
        return prepare_debian(out, args.debs_dir, args.vocab_size, args.workers, args.packages)
    if args.corpus == "kjv":
        return prepare_kjv(out, args.debs_dir, args.vocab_size, args.workers)
    shards = {split: getattr(args, split) for split in SPLITS} if args.corpus != "wikitext103" \
        else None
    if args.corpus == "text":
        data_bin = prepare_text(out, shards, args.tokenizer_from, args.workers)
        copy_tokenizer_files(args.tokenizer_from, data_bin)
        return data_bin
    if args.tokenizer_from is not None:
        if args.gpt2_dir or args.download_gpt2 or args.srcdict:
            raise PrepareError("--tokenizer-from brings its own BPE and dict.txt: drop "
                               "--gpt2-dir / --download-gpt2 / --srcdict")
        encode, srcdict = tokenizer_encoder(args.tokenizer_from)
    else:
        gpt2_dir = fetch_gpt2_bpe(out / "gpt2") if args.download_gpt2 else args.gpt2_dir
        if gpt2_dir is None:
            raise PrepareError("give --gpt2-dir (with encoder.json, vocab.bpe), --download-gpt2 "
                               "or --tokenizer-from")
        encode, srcdict = bpe.gpt2_encoder(gpt2_dir), args.srcdict
    if args.corpus == "wikitext103":
        raw_dir = fetch_wikitext103(out / "raw", args.url) if args.download else args.raw_dir
        if raw_dir is None:
            raise PrepareError("give --raw-dir or --download")
        data_bin = prepare_wikitext103(out, raw_dir, encode, args.workers, srcdict)
    else:
        data_bin = prepare_pile(out, shards, encode, args.workers, args.max_documents, srcdict)
    if args.tokenizer_from is not None:
        copy_tokenizer_files(args.tokenizer_from, data_bin)
    return data_bin


def main(argv: Optional[List[str]] = None) -> Optional[Path]:
    """The data-bin built, or None when OUT already held this very corpus."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise PrepareError(f"--workers must be >= 1, got {args.workers}")
    # inputs checked before anything is staged (a missing file leaves no OUT.partial)
    for split in SPLITS:
        for path in getattr(args, split, None) or []:
            if not Path(path).is_file():
                raise PrepareError(f"--{split} {path}: no such file")
    return build_atomically(args.out, _record(args), args.force, lambda staging: _build(args, staging))

