"""Serving embeds catalogue upserts with the item encoder's ONNX graph (`core.content_onnx`): the vectors must be the
ones training gave the data set's items (sentence-transformers), without torch in the process; a pipeline the graph
does not reproduce (another pooling) gets no graph rather than different vectors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import content_onnx
from core.content import embed_items, item_text, resolve_model

pytestmark = pytest.mark.slow  # exports the real MiniLM (~10 s)
MODEL = "all-MiniLM-L6-v2"
ITEMS = pd.DataFrame({  # lengths differ within one batch (padding), one is past the 256-token limit (truncation)
    "title": ["Heat (1995)", "Fargo (1996)", "Three Colors: Red (Trois couleurs: Rouge) (1994)", "Long " * 400],
    "genres": [["Action", "Crime", "Thriller"], [], ["Drama"], ["Comedy"]],
    "tags": [[], ["snow", "dark comedy", "kidnapping"], [], []],
})


def in_a_fresh_process(code: str) -> str:
    """`code` run by this interpreter in a new process from the repository root; its stdout."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model-cache")
    assert content_onnx.ensure(MODEL, root)
    return root


def test_the_graph_gives_the_training_vectors(cache: Path) -> None:
    enc = content_onnx.encoder(MODEL, cache)
    assert enc is not None
    got = enc.embed_items(ITEMS)
    want = embed_items(ITEMS, MODEL)
    assert got.shape == want.shape == (4, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got[0], got[1], atol=1e-2)  # distinct items stay distinct
    np.testing.assert_allclose(enc.embed_items(ITEMS.iloc[2:3]), want[2:3], atol=1e-5)  # alone: no padding
    # batches formed by length (here [0, 2], [1, 3]), answered in the items' order
    np.testing.assert_allclose(enc.encode(item_text(ITEMS), batch_size=2), want, atol=1e-5)
    assert content_onnx.ensure(MODEL, cache)  # built once: a second call finds it


def test_serving_embeds_without_importing_torch(cache: Path) -> None:
    code = ("import sys; from pathlib import Path; import pandas as pd; from core import content_onnx; "
            f"e = content_onnx.encoder({MODEL!r}, Path({str(cache)!r})); "
            "v = e.embed_items(pd.DataFrame({'title': ['Heat'], 'genres': [['Crime']], 'tags': [[]]})); "
            "assert v.shape == (1, 384), v.shape; assert 'torch' not in sys.modules, 'torch imported'")
    in_a_fresh_process(code)


def test_recsys_features_embeds_the_items_through_the_graph(cache: Path, tmp_path: Path) -> None:
    """`recsys features` gives the data set's items the vectors serving gives upserts: the graph's, on as many
    threads as the embedded Ray has CPUs."""
    from core.settings import load_settings
    from training.features import item_vectors

    s = load_settings().model_copy(update={"home": tmp_path, "model_cache_dir": cache, "content_model": MODEL,
                                           "ray_num_cpus": 2})
    got = item_vectors(s, ITEMS)
    np.testing.assert_array_equal(got, content_onnx.encoder(MODEL, cache).embed_items(ITEMS))
    np.testing.assert_allclose(got, embed_items(ITEMS, MODEL), atol=1e-5)


def test_a_pipeline_it_does_not_reproduce_gets_no_graph(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(resolve_model(MODEL))
    cls = SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), "cls")],
                              device="cpu")
    folder = tmp_path / "cls-model"
    cls.save(str(folder))
    cache = tmp_path / "cache"
    assert not content_onnx.ensure(str(folder), cache)
    assert content_onnx.encoder(str(folder), cache) is None
    assert not content_onnx.graph_dir(str(folder), cache).exists()
    from core.settings import load_settings
    from training.features import item_vectors

    s = load_settings().model_copy(update={"home": tmp_path, "model_cache_dir": cache, "content_model": str(folder)})
    np.testing.assert_array_equal(item_vectors(s, ITEMS), embed_items(ITEMS, str(folder)))  # sentence-transformers


def test_an_idle_catalogue_writer_unloads_its_encoder_and_loads_it_again(cache: Path, tmp_path: Path) -> None:
    """The Feedback replica's upsert encoder is dropped once idle (`release_idle`): not while in use, and the next
    upsert loads it again and embeds exactly as before."""
    from core.settings import load_settings
    from serving.catalogue import CatalogueWriter

    s = load_settings().model_copy(update={"home": tmp_path, "model_cache_dir": cache, "content_model": MODEL})
    writer = CatalogueWriter(s, store=object())
    first = writer.embed(ITEMS)
    assert writer._encoder and not writer.release_idle(3600.0)  # loaded, and just used
    assert writer.release_idle(0.0) and writer._encoder is None
    assert not writer.release_idle(0.0)  # nothing left to drop
    np.testing.assert_array_equal(writer.embed(ITEMS), first)
    assert writer._encoder


def test_the_weights_are_mapped_and_an_upsert_leaves_the_embedding_table_on_disk(cache: Path) -> None:
    """The graph's weights sit beside it and ONNX Runtime maps them: after embedding one item, the part of the
    weights file resident in the process is less than the file without the word-embedding table (its largest
    tensor, over half of it), whose untouched rows stay on disk. Read as the kernel counts them
    (/proc/self/smaps)."""
    import onnx

    folder = content_onnx.graph_dir(MODEL, cache)
    weights = folder / content_onnx.WEIGHTS
    graph = onnx.load(str(folder / content_onnx.GRAPH), load_external_data=False)
    table = max(int(next(e.value for e in t.external_data if e.key == "length")) for t in graph.graph.initializer
                if t.external_data)
    assert table > weights.stat().st_size / 2 > 10 * (folder / content_onnx.GRAPH).stat().st_size
    if not Path("/proc/self/smaps").exists():
        pytest.skip("no /proc/self/smaps on this system: the resident pages of a mapping cannot be read")
    code = ("import sys; from pathlib import Path; import pandas as pd; from core import content_onnx; "
            f"e = content_onnx.encoder({MODEL!r}, Path({str(cache)!r})); "
            "e.embed_items(pd.DataFrame({'title': ['Heat'], 'genres': [['Crime']], 'tags': [[]]})); "
            "inside, kb = False, 0\n"
            "for line in open('/proc/self/smaps'):\n"
            "    head = line.split()\n"
            "    if head and '-' in head[0] and ':' not in head[0]: inside = line.rstrip().endswith("
            f"{str(weights)!r})\n"
            "    elif inside and line.startswith('Rss:'): kb += int(head[1])\n"
            "print(kb)")
    resident = int(in_a_fresh_process(code).split()[-1]) * 1024
    assert 0 < resident < weights.stat().st_size - table / 2, (resident, weights.stat().st_size, table)


def test_a_graph_built_with_its_weights_inside_gets_them_moved_out(cache: Path, tmp_path: Path) -> None:
    """A model cache from before `WEIGHTS` (one self-contained graph file) is converted by `ensure` in a process
    without torch, in its own folder, and embeds exactly as before; a second `ensure` finds it converted."""
    import shutil

    import onnx

    built = content_onnx.graph_dir(MODEL, cache)
    older = content_onnx.graph_dir(MODEL, tmp_path / "older-cache")
    older.mkdir(parents=True)
    for name in (content_onnx.TOKENIZER, content_onnx.PIPELINE):
        shutil.copyfile(built / name, older / name)
    onnx.save_model(onnx.load(str(built / content_onnx.GRAPH)), str(older / content_onnx.GRAPH))  # weights inside
    before = content_onnx.encoder(MODEL, tmp_path / "older-cache").embed_items(ITEMS)
    inode = older.stat().st_ino
    code = ("import sys; from pathlib import Path; from core import content_onnx; "
            f"assert content_onnx.ensure({MODEL!r}, Path({str(tmp_path / 'older-cache')!r})); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    in_a_fresh_process(code)
    assert (older / content_onnx.WEIGHTS).is_file() and older.stat().st_ino == inode  # converted where it was
    assert sorted(p.name for p in (tmp_path / "older-cache").iterdir()) == [older.name]  # no temporary left
    assert (older / content_onnx.GRAPH).stat().st_size < (older / content_onnx.WEIGHTS).stat().st_size / 10
    np.testing.assert_array_equal(content_onnx.encoder(MODEL, tmp_path / "older-cache").embed_items(ITEMS), before)
    np.testing.assert_array_equal(before, content_onnx.encoder(MODEL, cache).embed_items(ITEMS))
    assert content_onnx.ensure(MODEL, tmp_path / "older-cache")
    assert sorted(p.name for p in older.iterdir()) == sorted([content_onnx.GRAPH, content_onnx.WEIGHTS,
                                                              content_onnx.TOKENIZER, content_onnx.PIPELINE])
