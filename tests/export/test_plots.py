"""circuits.export.plots: the faithfulness curve is a PNG written atomically."""

from dataclasses import replace

from circuits.circuit.config import AblationSpec
from circuits.circuit.faithfulness import FaithfulnessCurve, Measurement
from circuits.circuit.record import CurvePointRecord, LevelRecord, record_of
from circuits.export.plots import plot_faithfulness, plot_rankings
from tests.helpers import hierarchical_graph

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _curve() -> FaithfulnessCurve:
    points = [
        Measurement(n_latents=0, n_errors=2, faithfulness=0.1, random_faithfulness=0.05),
        Measurement(n_latents=10, n_errors=2, faithfulness=0.9, random_faithfulness=0.2),
    ]
    return FaithfulnessCurve(
        spec=AblationSpec("mean"),
        m_model=2.0,
        m_empty=-1.0,
        whole=Measurement(n_latents=10, n_errors=2, faithfulness=0.9, completeness=0.8, random_faithfulness=0.2),
        curve=points,
        cpr=0.7,
        cmd=0.1,
    )


def test_plot_faithfulness_writes_png_atomically(tmp_path):
    folder = tmp_path / "plots"  # does not exist yet
    path = plot_faithfulness(_curve(), folder / "faithfulness.png")
    assert path == folder / "faithfulness.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000
    assert sorted(p.name for p in folder.iterdir()) == ["faithfulness.png"]


def test_plot_faithfulness_replaces_old_file_with_title(tmp_path):
    path = tmp_path / "f.png"
    path.write_bytes(b"old")
    plot_faithfulness(_curve(), path, title="a title")
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


def test_plot_rankings_draws_both_feature_rankings(tmp_path):
    def level(ranking, sizes, fs):
        curve = [CurvePointRecord(k, 1, f, 0.0) for k, f in zip(sizes, fs, strict=True)]
        return LevelRecord(ranking, sizes[-1], 1, fs[-1], 0.0, 0.0, fs[-1] >= 0.9, curve)

    h = replace(
        record_of(hierarchical_graph()).hierarchy,
        attribution=level("attribution", [1, 10, 100], [0.0, 0.5, 0.95]),
        optimised=level("optimised", [1, 10, 50], [0.1, 0.7, 0.92]),
    )
    path = plot_rankings(h, tmp_path / "rankings.png")
    assert path.read_bytes().startswith(PNG_MAGIC) and sorted(p.name for p in tmp_path.iterdir()) == ["rankings.png"]
    h = replace(h, optimised=None)  # no mask steps: the attribution ranking alone
    assert plot_rankings(h, tmp_path / "one.png").read_bytes().startswith(PNG_MAGIC)
