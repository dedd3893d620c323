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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]


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
