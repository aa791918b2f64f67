"""A lesson's cells written as Python strings, for the scripts that build a lesson notebook (``build_lesson15.py``,
``build_lesson16.py``): ``md(text)`` and ``code(text)`` append a cell, ``write(name)`` writes
``notebooks/<name>`` without outputs (``store_outputs.py`` runs it and stores them)."""
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
cells = []


def md(text):
    cells.append(nbformat.v4.new_markdown_cell(text.strip("\n")))


def code(text):
    cells.append(nbformat.v4.new_code_cell(text.strip("\n")))


def write(name: str):
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python", "pygments_lexer": "ipython3"}}
    path = ROOT / "notebooks" / name
    nbformat.write(nb, path)
    print(f"wrote {path.relative_to(ROOT)}")
