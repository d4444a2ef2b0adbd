"""The text the language model learns from: what the project ships, in a fixed order.

Documents: ``README.md``, ``docs/*.md`` (sorted) and the docstrings of the project's modules
(module, class and function docstrings, files sorted by path). Every tenth document (by that
order) is held out for perplexity; the tokenizer and the model see only the rest. The
:func:`corpus_hash` of the documents keys the cached demo model (:mod:`llm.demo`).
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCSTRING_PACKAGES = ("registry", "serving", "warehouse", "features", "assets",
                      "orchestration", "analysis", "monitoring", "llm")
HOLD_OUT_EVERY = 10


@dataclass(frozen=True)
class Document:
    name: str  # where it comes from: a path, or path:qualname for a docstring
    text: str


@dataclass(frozen=True)
class Corpus:
    train: tuple[Document, ...]
    held_out: tuple[Document, ...]

    def train_texts(self) -> list[str]:
        return [d.text for d in self.train]

    def held_out_texts(self) -> list[str]:
        return [d.text for d in self.held_out]


def load_documents(root: Path = REPO_ROOT) -> list[Document]:
    """Every document of the corpus, in its fixed order."""
    docs: list[Document] = []
    readme = root / "README.md"
    if readme.is_file():
        docs.append(Document("README.md", readme.read_text(encoding="utf-8")))
    for path in sorted((root / "docs").glob("*.md")):
        docs.append(Document(str(path.relative_to(root)), path.read_text(encoding="utf-8")))
    for package in DOCSTRING_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "grpc_gen" in path.parts:
                continue
            docs.extend(_docstrings(path, str(path.relative_to(root))))
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise FileNotFoundError(f"no corpus text under {root} (README.md, docs/*.md, modules)")
    return docs


def _docstrings(path: Path, name: str) -> list[Document]:
    """A module's docstrings, joined into one document (short ones alone teach little)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError:
        return []
    parts = [ast.get_docstring(tree) or ""]
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            parts.append(ast.get_docstring(node) or "")
    text = "\n\n".join(p for p in parts if p)
    return [Document(name, text)] if text else []


def split_corpus(documents: list[Document]) -> Corpus:
    """Every :data:`HOLD_OUT_EVERY`-th document is held out."""
    held = tuple(d for i, d in enumerate(documents) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1)
    train = tuple(d for i, d in enumerate(documents) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1)
    return Corpus(train=train, held_out=held)


def load_corpus(root: Path = REPO_ROOT) -> Corpus:
    return split_corpus(load_documents(root))


def corpus_hash(corpus: Corpus) -> str:
    """sha256 over every document's name and text, train and held out."""
    digest = hashlib.sha256()
    for doc in (*corpus.train, *corpus.held_out):
        for part in (doc.name, doc.text):
            data = part.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()
