"""The book's tables, numbers and figures as package functions: published values, Table 1 and 2, training summaries,
invariance copies, embedding-space statistics and the plots that draw them. Small synthetic inputs, where every
expected value can be counted by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from eacnn import analysis  # noqa: E402
from eacnn.published import PUBLISHED, SOURCES, published, published_row, published_table  # noqa: E402
from eacnn.retrieval.embed import Embeddings  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


# ---------------------------------------------------------------------------------------------------------------
# A small test pool whose every accuracy can be counted by hand
# ---------------------------------------------------------------------------------------------------------------
# test queries: 8 x Fm-3m (225), 5 x P2_1/c (14), one each of P-1 (2), P2 (3), P2_1 (4), 4 x Pnma (62)
TEST_SG = [225] * 8 + [14] * 5 + [2, 3, 4] + [62] * 4
TRAIN_SG = [225] * 10 + [14] * 5 + [62] * 5  # groups 2, 3 and 4 never occur in training
SYMBOL = {225: "Fm-3m", 14: "P2_1/c", 2: "P-1", 3: "P2", 4: "P2_1", 62: "Pnma"}
SYSTEM = {225: "cubic", 14: "monoclinic", 2: "triclinic", 3: "monoclinic", 4: "monoclinic", 62: "orthorhombic"}


@pytest.fixture(scope="module")
def pool():
    """A fake data set (labels, vectors) and embeddings in which query 0 (Fm-3m) retrieves query 1's structure (same
    space group) and query 13 (P-1) retrieves query 14's (P2: another group); every other query finds its own."""
    sg = np.array(TRAIN_SG + TEST_SG)
    n_train = len(TRAIN_SG)
    labels = pd.DataFrame({
        "material_id": [f"mp-{i}" for i in range(len(sg))], "formula": [f"X{i}" for i in range(len(sg))],
        "spacegroup_number": sg, "spacegroup_symbol": [SYMBOL[s] for s in sg],
        "crystal_system": [SYSTEM[s] for s in sg], "split": ["train"] * n_train + ["test"] * len(TEST_SG)})
    rng = np.random.default_rng(0)
    dataset = SimpleNamespace(labels=labels, key="fake", vectors=rng.random((len(sg), 140)).astype(np.float32))
    z = rng.normal(size=(len(TEST_SG), 16))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    q = z.copy()
    q[0], q[13] = z[1], z[14]
    emb = Embeddings(np.arange(n_train, len(sg)), z.astype(np.float32), {0: q.astype(np.float32),
                                                                           2: z.astype(np.float32)}, "model A")
    return dataset, emb


def test_published_values_are_the_papers():
    assert published("eacnn.table1.top1") == 95.96
    assert published("eacnn.table1.top3") == 99.95
    assert published("eacnn.table1.top5") == 99.98
    assert published("eacnn.table2.fm3m.top1") == 95.92 and published("eacnn.table2.fm3m.test_samples") == 808
    assert published("eacnn.table2.single.top1") == 96.00 and published("eacnn.table2.single.groups") == 25
    # 96.00 % of 25 single-sample groups is a whole number of queries
    assert published("eacnn.table2.single.top1") / 100 * published("eacnn.table2.single.groups") == pytest.approx(24)
    assert "10.3390/app15115851" in published_table().loc["eacnn.table1.top1", "citation"]


def test_published_table_is_one_consistent_table():
    keys = [r.key for r in PUBLISHED]
    assert len(keys) == len(set(keys))
    for r in PUBLISHED:
        assert r.source in SOURCES and r.where and r.unit and r.quantity, r
        assert r.key.startswith(r.source + "."), r
        if r.unit == "%":
            assert 0 <= r.value <= 100, r
    table = published_table("eacnn.table2")
    assert set(table.index) == {k for k in keys if k.startswith("eacnn.table2")}
    assert table["value"].dtype == float
    assert published_row("pxrdgen.mp20.top10").value == 92.42
    with pytest.raises(KeyError, match="eacnn.table1.top1"):  # the message lists the known keys
        published("eacnn.table1.top2")


def _code_cells(path: Path):
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            yield "".join(cell["source"])


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_type_no_published_number_and_define_nothing(path):
    """Published numbers come from eacnn.published; notebook cells call, plot and glue (no def or class)."""
    text = path.read_text()
    for r in PUBLISHED:
        if r.unit != "%" and r.value < 100:  # small counts (25 groups) are too common to search for
            continue
        shown = f"{r.value:.2f}" if r.unit == "%" else f"{int(r.value):,}"
        assert not re.search(rf"(?<![\d.,]){re.escape(shown)}(?![\d,]|\.\d)", text), f"{path.name} types {shown}"
    for source in _code_cells(path):
        assert not re.search(r"^\s*(def|class)\s", source, re.M), f"{path.name}: {source[:80]}"


# ---------------------------------------------------------------------------------------------------------------
# Table 1 and Table 2
# ---------------------------------------------------------------------------------------------------------------
def test_table1_comparison_quotes_published_rows_above_ours(pool):
    dataset, emb = pool
    table = analysis.retrieval_table([emb], pools=("all", 10))
    full = analysis.whole_pool(table)
    assert full.loc[("model A", "clean"), "candidates"] == 20
    assert full.loc[("model A", "clean"), "top1"] == pytest.approx(90.0)  # queries 0 and 13 miss
    assert full.loc[("model A", "moderate"), "top1"] == pytest.approx(100.0)
    comparison = analysis.table1_comparison(table)
    paper, pxrdgen, ours = comparison.to_dict("records")
    assert [paper[f"top{k}"] for k in (1, 3, 5)] == [95.96, 99.95, 99.98] and np.isnan(paper["top10"])
    assert pxrdgen["top10"] == published("pxrdgen.mp20.top10")
    assert ours["method"] == "model A, clean" and ours["top1"] == pytest.approx(90.0)
    assert list(comparison["source"]) == ["published", "published", "this book"]


def test_table2_counts_fm3m_and_single_sample_groups(pool):
    dataset, emb = pool
    per_sg = analysis.per_spacegroup_accuracy(emb, dataset)
    t2 = analysis.table2({"model A": per_sg}).set_index(["model", "subset"])
    paper = t2.loc["EACNN paper (published)"]
    assert paper.loc["Fm-3m (225)", "Top-1 (%)"] == 95.92 and paper.loc["Fm-3m (225)", "test samples"] == 808
    assert paper.loc["groups with 1 test sample", "space groups"] == 25
    ours = t2.loc["model A"]
    assert ours.loc["Fm-3m (225)", "test samples"] == 8
    assert ours.loc["Fm-3m (225)", "Top-1 (%)"] == pytest.approx(100 * 7 / 8)
    assert ours.loc["groups with 1 test sample", "Top-1 (%)"] == pytest.approx(100 * 2 / 3)
    # groups with at most 5 queries: 14 (5), 2, 3, 4 (1 each), 62 (4): 12 queries, one missed
    assert ours.loc["groups with ≤ 5 test samples", "test samples"] == 12
    assert ours.loc["groups with ≤ 5 test samples", "Top-1 (%)"] == pytest.approx(100 * 11 / 12)
    numbers = analysis.table2_numbers(per_sg)
    assert numbers == pytest.approx({"fm3m_n": 8, "fm3m_top1": 87.5, "n_single": 3, "single_top1": 200 / 3,
                                     "single_unseen": 3})


def test_table2_without_fm3m_or_single_groups_gives_nan():
    per_sg = pd.DataFrame({"spacegroup_number": [14], "spacegroup_symbol": ["P2_1/c"], "test_samples": [7],
                           "top1": [50.0], "top5": [80.0], "train_samples": [3]})
    numbers = analysis.table2_numbers(per_sg)
    assert numbers["fm3m_n"] == 0 and np.isnan(numbers["fm3m_top1"]) and np.isnan(numbers["single_top1"])


def test_rare_groups_sets_models_side_by_side(pool):
    dataset, emb = pool
    other = Embeddings(emb.index, emb.structures, {0: emb.structures}, "model B")  # finds every structure
    per_sg = {e.name: analysis.per_spacegroup_accuracy(e, dataset) for e in (emb, other)}
    rare = analysis.rare_groups(per_sg, max_test_samples=1)
    assert sorted(rare["spacegroup_number"]) == [2, 3, 4]
    assert (rare["top1 (model B)"] == 100).all()
    assert rare.set_index("spacegroup_number").loc[2, "top1"] == 0  # query 13 retrieved another group's structure
    assert (np.diff(rare["train_samples"]) >= 0).all()


def test_spacegroup_summaries_stack_conditions(pool):
    dataset, emb = pool
    classifier = SimpleNamespace(predict=lambda patterns: (np.full(len(patterns), 225), None))  # always Fm-3m
    clean = analysis.spacegroup_summaries([emb], dataset, classifier, levels=(0,))
    assert list(clean.columns[:2]) == ["condition", "subset"] and set(clean.condition) == {"clean"}
    clean = clean.set_index("subset")
    assert clean.loc["all test queries", "model A"] == pytest.approx(95.0)  # only query 13 names a wrong group
    assert clean.loc["all test queries", "classifier"] == pytest.approx(100 * 8 / 20)
    assert clean.loc["groups absent from training", "queries"] == 3
    assert clean.loc["Fm-3m (225)", "classifier"] == 100
    both = analysis.spacegroup_summaries([emb], dataset, levels=(0, 2))
    assert "classifier" not in both and list(both.condition.unique()) == ["clean", "moderate"]
    moderate = both[both.condition == "moderate"].set_index("subset")
    assert moderate.loc["all test queries", "model A"] == 100


def test_top_candidates_name_their_rows(pool):
    dataset, emb = pool
    top = analysis.top_candidates(emb, dataset, int(emb.index[0]), k=3)
    assert list(top["rank"]) == [1, 2, 3]
    assert list(dataset.labels["material_id"].iloc[top["row"]]) == list(top["material_id"])
    assert top["row"].iloc[0] == emb.index[1] and not top["correct"].iloc[0]


# ---------------------------------------------------------------------------------------------------------------
# Training (chapter 4)
# ---------------------------------------------------------------------------------------------------------------
def test_loss_reference_points():
    cold = analysis.loss_reference_points(n=256, dim=128, temperature=0.07)
    assert cold["log_n"] == pytest.approx(np.log(256))
    assert cold["aligned"] < 1e-2 < cold["random"]
    assert abs(cold["random"] - cold["log_n"]) < 1.5
    # at temperature 1 random cosines (std 1/sqrt(128)) barely move the softmax: the loss is log N
    hot = analysis.loss_reference_points(n=256, dim=128, temperature=1.0)
    assert hot["random"] == pytest.approx(np.log(256), abs=0.05)
    assert analysis.loss_reference_points(seed=3) == analysis.loss_reference_points(seed=3)


def test_perturbation_settings_are_the_config_levels():
    from eacnn.config import AugmentConfig

    table = analysis.perturbation_settings()
    assert list(table.columns) == ["mild", "moderate", "strong"]
    from eacnn.analysis.training import PERTURBATION_NAMES as names

    level = vars(AugmentConfig.level(2))
    assert table["moderate"].to_dict() == {names[k]: level[k] for k in names}  # every physical setting, named
    assert "lattice strain, max |ε|" in table.index and "kind" not in table.index


def _log(**extra) -> pd.DataFrame:
    return pd.DataFrame({"epoch": [1, 2, 3, 4], "train_loss": [3.0, 2.0, 1.5, 1.2], "val_loss": [3.1, 2.2, 1.9, 2.0],
                         "val_top1": [0.1, 0.3, 0.4, 0.5], "temperature": [0.07, 0.06, 0.05, 0.04],
                         "seconds": [60.0, 60.0, 60.0, 120.0], **extra})


def test_best_epoch_prefers_the_selection_score():
    log = _log(val_score=[0.1, 0.2, 0.6, 0.5], val_top1_perturbed=[0.0, 0.1, 0.8, 0.5], val_pool=[99, 99, 99, 99])
    assert analysis.best_epoch(log)["epoch"] == 3
    assert analysis.best_epoch(_log())["epoch"] == 4  # older logs: the best clean Top-1
    # a shipped log marks the epoch chosen after training, whatever the in-training score says
    assert analysis.best_epoch(_log(val_score=[0.1, 0.2, 0.6, 0.5], kept=[0, 1, 0, 0]))["epoch"] == 2
    assert analysis.validation_pool(log, 10) == 99 and analysis.validation_pool(_log(), 10) == 10
    summary = analysis.training_summary({"new": log, "old": _log()}, n_val=10)
    assert summary.loc["new"].to_dict() == pytest.approx({
        "epochs": 4, "best epoch": 3, "validation pool": 99, "val Top-1 clean (%)": 40.0,
        "val Top-1 moderate (%)": 80.0, "final temperature": 0.04, "training time (min)": 5.0})
    assert summary.loc["old", "validation pool"] == 10 and np.isnan(summary.loc["old", "val Top-1 moderate (%)"])


def test_ablation_highlights(tmp_path):
    table = pd.DataFrame({"variant": ["paper", "lattice", "shared"], "structure tower": ["MACE", "MACE+lat", "shared"],
                          "epochs": [5, 5, 5], "val Top-1 clean (%)": [3.0, 20.0, 40.0],
                          "val Top-1 moderate (%)": [1.0, 30.0, 25.0]})
    path = tmp_path / "ablation.csv"
    table.to_csv(path, index=False)
    highlights = analysis.ablation_highlights(analysis.ablation_table(path))
    assert highlights == {"epochs": 5, "best": "MACE+lat", "paper_clean": 3.0, "best_clean": 20.0,
                          "best_moderate": 30.0}
    assert analysis.ablation_table(tmp_path / "missing.csv").empty
    assert analysis.ablation_highlights(pd.DataFrame()) == {}
    shipped = analysis.ablation_table()  # the shipped result, when present, has what chapter 4 reads
    if len(shipped):
        assert set(analysis.ablation_highlights(shipped)) == set(highlights)


def test_model_sizes_count_each_part():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Towers(nn.Module):
        def __init__(self):
            super().__init__()
            self.structure_encoder = nn.Module()
            self.structure_encoder.mace = nn.Linear(3, 4)  # 16 parameters
            self.structure_encoder.head = nn.Linear(4, 2)  # 10
            self.xrd_encoder = nn.Linear(5, 5)  # 30
            self.logit_scale = nn.Parameter(torch.zeros(()))  # 1

    sizes = analysis.model_sizes({"m": Towers()})
    assert sizes.loc["m"].to_dict() == {"MACE": 16, "structure tower": 26, "XRD tower": 30, "total": 57}


# ---------------------------------------------------------------------------------------------------------------
# Invariance copies (chapter 3)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def monoclinic():
    from pymatgen.core import Lattice, Structure

    lattice = Lattice.monoclinic(5.1, 6.3, 7.2, 101.0)
    return Structure(lattice, ["Zn", "O", "O", "S"], [[0.1, 0.2, 0.3], [0.4, 0.1, 0.8], [0.7, 0.6, 0.2],
                                                       [0.25, 0.9, 0.55]])


def test_random_rotation_is_orthogonal():
    from eacnn.models.invariance import random_rotation

    rng = np.random.default_rng(0)
    for proper in (True, False):
        dets = []
        for _ in range(20):
            r = random_rotation(rng, proper=proper)
            assert np.allclose(r @ r.T, np.eye(3), atol=1e-12)
            dets.append(round(np.linalg.det(r)))
        assert set(dets) == ({1} if proper else {-1, 1})


def test_symmetry_copies_describe_the_same_crystal(monoclinic):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from eacnn.models.invariance import symmetry_copies

    copies = symmetry_copies(monoclinic, seed=1)
    assert list(copies) == ["original", "rotated", "origin shifted", "atoms permuted", "2x1x1 supercell"]
    s = copies["original"]
    assert not np.allclose(copies["rotated"].lattice.matrix, s.lattice.matrix)
    assert np.allclose(copies["rotated"].lattice.abc, s.lattice.abc)
    assert not np.allclose(copies["origin shifted"].frac_coords, s.frac_coords)
    assert not np.allclose(copies["atoms permuted"].frac_coords, s.frac_coords)
    assert len(copies["2x1x1 supercell"]) == 2 * len(s)
    matcher = StructureMatcher(primitive_cell=False, attempt_supercell=True)
    for name, c in copies.items():
        assert matcher.fit(s, c), name
    assert symmetry_copies(monoclinic, seed=1)["rotated"].lattice == copies["rotated"].lattice  # seeded


class _FrameBound:
    """A deliberately bad 'model': the embedding is the first site's Cartesian position (frame and order bound)."""

    def encode_structures(self, structures, progress=False):
        import torch

        z = torch.tensor(np.array([s.cart_coords[0] for s in structures]))
        return torch.nn.functional.normalize(z, dim=1)


def test_invariance_check_passes_the_towers_and_catches_a_bad_embedding(monoclinic):
    torch = pytest.importorskip("torch")
    from eacnn.config import ModelConfig
    from eacnn.models import EACNN
    from eacnn.models.invariance import invariance_check

    torch.manual_seed(0)
    small = dict(channels=8, max_L=1, max_ell=2, correlation=2, radial_mlp=16, readout_dim=8, mlp_dim=32,
                 embed_dim=16, xrd_dim=32, xrd_channels=8, xrd_blocks=1, sim_pattern_channels=8, lattice_n_d=6)
    model = EACNN(ModelConfig(kind="eacnn", **small)).eval()
    check = invariance_check({"eacnn": model, "frame-bound": _FrameBound()}, monoclinic, seed=0)
    assert list(check.columns) == ["eacnn", "frame-bound"]
    assert check["eacnn"].min() > 1 - 1e-4
    assert check.loc["original"].tolist() == pytest.approx([1.0, 1.0])
    assert check.loc["rotated", "frame-bound"] < 1 - 1e-3


# ---------------------------------------------------------------------------------------------------------------
# The embedding space (chapter 7) and measured patterns (chapter 9)
# ---------------------------------------------------------------------------------------------------------------
def _clusters(n_per: int = 30, spread: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:3]
    z = np.concatenate([c + spread * rng.normal(size=(n_per, 8)) for c in centres])
    classes = np.repeat(["cubic", "monoclinic", "triclinic"], n_per)
    return z / np.linalg.norm(z, axis=1, keepdims=True), classes


def test_crystal_system_separation_tells_clusters_from_noise():
    z, classes = _clusters()
    noise = np.random.default_rng(1).normal(size=z.shape)
    table = analysis.crystal_system_separation({"clusters": z, "noise": noise / np.linalg.norm(noise, axis=1,
                                                                                              keepdims=True)},
                                               classes, k=5, silhouette_sample=60)
    assert table.loc["clusters", "5-NN crystal-system purity (%)"] == 100
    assert table.loc["clusters", "silhouette by crystal system"] > 0.8
    assert table.loc["noise", "5-NN crystal-system purity (%)"] < 60
    assert abs(table.loc["noise", "silhouette by crystal system"]) < 0.2


def test_embedding_spaces_and_tsne_maps(pool):
    dataset, emb = pool
    spaces = analysis.embedding_spaces([emb], dataset)
    assert list(spaces) == [("model A", "structure tower"), ("model A", "XRD tower (clean patterns)"),
                            ("raw simulated patterns", "140 bins")]
    assert np.allclose(np.linalg.norm(spaces[("raw simulated patterns", "140 bins")], axis=1), 1, atol=1e-5)
    assert len(analysis.embedding_spaces([emb], dataset, raw_patterns=False)) == 2
    from threadpoolctl import threadpool_limits

    z, _ = _clusters(n_per=15)
    with threadpool_limits(1):  # t-SNE's OpenMP threads crawl on a busy machine; 30 points need one
        pick, maps = analysis.tsne_maps({"a": z, "b": z[::-1].copy()}, n=30, seed=0)
        again, _ = analysis.tsne_maps({"a": z}, n=30, seed=0)
    assert len(set(pick)) == 30 and set(maps) == {"a", "b"} and maps["a"].shape == (30, 2)
    assert np.array_equal(pick, again)


def test_rerank_comparison():
    report = pd.DataFrame({"phase": ["MnO", "MnO", "TiO2"], "filter": ["none", "Mn,O", "none"], "rank": [3, 1, 7]})
    reranked = report.assign(rank=[1, 1, 2])
    out = analysis.rerank_comparison(report, reranked, top=20)
    assert out.loc[("MnO", "none")].tolist() == [3, 1]
    assert list(out.columns) == ["model rank", "re-ranked (top 20)"]


# ---------------------------------------------------------------------------------------------------------------
# Figures (eacnn.book.plots)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def test_plot_model_input_draws_profile_and_bins(close_figures):
    from eacnn.book import plots
    from eacnn.config import XRDConfig

    cfg = XRDConfig()
    vec = np.zeros(cfg.n_bins)
    vec[40] = 1.0
    ax = plots.plot_model_input(np.array([30.2, 55.0]), np.array([1.0, 0.5]), vec, config=cfg, title="t")
    (curve,) = ax.get_lines()
    x, y = curve.get_data()
    assert y.max() == pytest.approx(1.0) and x[np.argmax(y)] == pytest.approx(30.2, abs=0.01)
    assert len(x) == round((cfg.two_theta_max - cfg.two_theta_min) / 0.01)
    assert ax.get_title() == "t"


def test_plot_case_study_and_top_hits(pool, close_figures):
    from eacnn.book import plots

    dataset, emb = pool
    top = analysis.top_candidates(emb, dataset, int(emb.index[0]), k=3)
    axes = plots.plot_case_study(dataset.vectors, dataset.labels, int(emb.index[0]), top)
    assert len(axes) == 4
    assert axes[0].get_title().startswith("query: X20, Fm3̅m")  # symbols typeset as in print (Fm3̄m, P2₁/c)
    assert axes[1].get_title().startswith("#1: X21") and "✓" not in axes[1].get_title()
    hits = top.rename(columns={"material_id": "id", "spacegroup_symbol": "spacegroup"}).head(2)
    axes = plots.plot_top_hits(dataset.vectors[0], hits, dataset.vectors, query_label="q")
    assert len(axes) == 3 and axes[1].get_legend().get_texts()[0].get_text().startswith("#1 X21")


def test_plot_preprocessing_and_scan(close_figures):
    from eacnn.book import plots

    tt = np.linspace(10, 90, 801)
    steps = {"two_theta": tt, "mapped": 100 + np.exp(-((tt - 40) / 0.2) ** 2), "background": np.full_like(tt, 100.0),
             "corrected": np.exp(-((tt - 40) / 0.2) ** 2)}
    grid = SimpleNamespace(steps=steps, vector=np.linspace(0, 1, 140))
    axes = plots.plot_preprocessing(grid)
    assert len(axes) == 3 and axes[0].get_yscale() == "log" and axes[2].get_xlim() == (10.0, 80.0)
    ax = plots.plot_scan(tt, steps["mapped"], title="raw")
    assert ax.get_title() == "raw" and len(ax.get_lines()[0].get_xdata()) == len(tt)


def test_table_figures(pool, close_figures):
    from eacnn.book import plots

    dataset, emb = pool
    full = analysis.whole_pool(analysis.retrieval_table([emb], pools=("all",)))
    ax = plots.plot_robustness(full)
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == ["clean", "moderate"] and list(line.get_ydata()) == pytest.approx([90, 100])
    assert "20 candidates" in ax.get_ylabel()
    per_sg = analysis.per_spacegroup_accuracy(emb, dataset)
    ax = plots.plot_accuracy_vs_frequency({"model A": per_sg})
    assert len(ax.collections[0].get_offsets()) == len(per_sg)
    binned = pd.DataFrame({"queries": [3, 17], "model A": [66.7, 100.0], "classifier": [0.0, 47.1]},
                          index=pd.Index(["0", "1–10"], name="training structures"))
    ax = plots.plot_classifier_vs_retrieval(binned, "model A")
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([66.7, 100.0, 0.0, 47.1])


def test_plot_tsne_panels(close_figures):
    from eacnn.book import plots

    xy = np.random.default_rng(0).normal(size=(9, 2))
    systems = ["cubic"] * 3 + ["triclinic"] * 6
    axes = plots.plot_tsne_panels({("m", "structure tower"): xy, ("m", "XRD tower"): xy, ("n", "s"): xy}, systems)
    assert axes.shape == (2, 2) and not axes[1, 1].get_visible()
    assert axes[0, 0].get_title() == "m\nstructure tower" and axes[0, 0].get_legend() is not None
    assert sum(len(c.get_offsets()) for c in axes[0, 0].collections) == 9


def test_chance_levels_are_sums_of_squared_shares(pool):
    assert analysis.chance_purity(np.array(["a", "a", "b", "b"])) == pytest.approx(50.0)
    assert analysis.chance_purity(np.array(["a"] * 3 + ["b"])) == pytest.approx(100 * (0.75**2 + 0.25**2))
    dataset, emb = pool
    chance = analysis.symmetry_chance(dataset, emb.index)
    # test space groups: 8, 5, 1, 1, 1, 4 of 20
    assert chance["same space group (%)"] == pytest.approx(100 * (64 + 25 + 1 + 1 + 1 + 16) / 400)
    # crystal systems: cubic 8, monoclinic 5 + 1 + 1, triclinic 1, orthorhombic 4
    assert chance["same crystal system (%)"] == pytest.approx(100 * (64 + 49 + 1 + 16) / 400)


def test_search_match_neighbours_use_the_raw_patterns(pool):
    dataset, emb = pool
    rows = emb.index
    table = analysis.pattern_neighbour_symmetry(dataset, rows)
    assert table.loc["nearest other candidate (all queries)", "queries"] == len(rows)
    # a copy of query 0's pattern as query 1's: query 0's nearest other candidate is query 1 (same group)
    twin = SimpleNamespace(labels=dataset.labels, vectors=dataset.vectors.copy())
    twin.vectors[rows[1]] = twin.vectors[rows[0]]
    near = analysis.pattern_neighbour_symmetry(twin, rows[:2])
    assert near.loc["nearest other candidate (all queries)", "same space group (%)"] == 100.0


def test_mixture_summary_counts_phases_and_weight_errors():
    from eacnn.measured.report import mixture_numbers, mixture_rows, mixture_summary

    df = pd.DataFrame({
        "kind": ["dara", "dara", "dara", "synthetic 2-phase (train)", "synthetic 2-phase (train)"],
        "pattern": ["a", "a", "b", "s0", "s1"], "elements": ["any", "O V", "any", "any", "any"],
        "truth": ["V2O5;TiO2", "V2O5;TiO2", "NiO;ZnO;In2O3", "Ag;Ag2S", "Ag;TmMgHg2"],
        "truth_ids": [np.nan] * 3 + ["mp-124;mp-610517", "mp-124;mp-865981"],  # MP-20 entries: their space groups
        "truth_weight_fractions": ["0.300;0.700", "0.300;0.700", "0.3;0.3;0.4", "0.5;0.5", "0.2;0.8"],
        "named": [2, 2, 1, 2, 1], "all": [True, True, False, True, False], "spurious": [0, 0, 2, 0, 1],
        "weight_error_max": [0.05, 0.02, np.nan, 0.04, np.nan], "max_cosine": [np.nan] * 3 + [0.1, 0.5],
        "all_by_id": [np.nan] * 3 + [True, False],
        "found": ["TiO2;V2O5", "TiO2;V2O5", "NiO;Foo;Bar", "Ag;Ag2S", "Ag;Q"],
        "found_spacegroups": ["I4_1/amd;Pmmn"] * 2 + ["Fm-3m;P1;P1", "Fm-3m;P2_1/c", "Fm-3m;P1"],
        "found_weight_fractions": ["0.72;0.28"] * 2 + ["0.5;0.3;0.2", "0.46;0.54", "0.5;0.5"]})
    s = mixture_summary(df).set_index(["set", "search"])
    dara = s.loc[("Dara lab scans", "whole database")]
    assert dara["patterns"] == 2 and dara["every phase named (%)"] == 50.0 and dara["true phases named"] == "3 of 5"
    assert dara["spurious phases per pattern"] == 1.0 and dara["weight error, median (wt %)"] == pytest.approx(5.0)
    synth = s.loc[("synthetic 2-phase (test structures, training measurement family)", "whole database")]
    assert synth["every phase, exact entry (%)"] == 50.0 and synth["judged for weight"] == 1
    assert synth["every phase named (%)"] == 50.0 and synth["true phases named"] == "3 of 4"
    # the right formula in another polymorph is not the phase: Ag2S found as P2_1 for the P2_1/c entry
    polymorph = df.iloc[[3]].assign(found_spacegroups="Fm-3m;P2_1")
    wrong = mixture_summary(polymorph).iloc[0]
    assert wrong["every phase named (%)"] == 0.0 and wrong["true phases named"] == "1 of 2"
    assert wrong["spurious phases per pattern"] == 1.0
    numbers = mixture_numbers(df)
    assert numbers["mix_dara_el_all"] == "100" and numbers["mix_s3_any_all"] == "n/a"
    rows = mixture_rows(df, "dara", search="elements")
    assert list(rows["true wt %"]) == ["30 / 70"] and list(rows["found"]) == ["TiO2 I4_1/amd + V2O5 Pmmn"]
    assert numbers["mix_targets"].startswith("Without chemical hints, the 2-phase set misses the ≥ 90 % target by 40.0")
    from eacnn.measured.report import scan_name

    assert scan_name("V2O5_0p3015-TiO2_0p6998--8min") == "8 min" and scan_name("Example__Mn2O3+LiF") == "Mn2O3 + LiF"


def test_phase_in_needs_formula_and_space_group():
    from eacnn.measured.report import phase_in

    db = SimpleNamespace(labels=pd.DataFrame({"formula": ["Mn1 O1", "Ti2 O4"], "spacegroup_symbol": ["P6_3mc", "C2/c"]}))
    assert phase_in(db, "MnO", "P6_3mc") and phase_in(db, "TiO2", "C2/c")
    assert not phase_in(db, "MnO", "Fm-3m") and not phase_in(db, "Mn2O3", "P6_3mc")


def test_epoch_search_table_orders_conditions_and_adds_the_mean(tmp_path):
    rows = [{"model": m, "condition": c, "penalty": 0.01, "rule": "likelihood 0.04", "top1": v}
            for m, vals in (("epoch_3", (100.0, 80.0)), ("epoch_16", (98.0, 86.0)), ("avg", (99.0, 84.0)))
            for c, v in zip(("clean", "aniso 1.5 %"), vals)]
    path = tmp_path / "epochs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = analysis.epoch_search_table(path)
    assert list(table.index) == ["clean", "aniso 1.5 %", "mean"] and list(table.columns) == [3, 16, "avg"]
    assert table.loc["mean", 3] == 90.0 and table.loc["mean", 16] == 92.0 and table.loc["aniso 1.5 %", "avg"] == 84.0
    assert analysis.epoch_search_table(tmp_path / "missing.csv").empty


def test_cell_fit_table_puts_the_isotropic_refinement_first_and_adds_the_mean(tmp_path):
    rows = [{"model": "default", "condition": c, "penalty": 0.01, "rule": r, "top1": v}
            for r, vals in (("cell prior 0 gain 1", (100.0, 94.0)), ("cell prior 0.04 gain 2", (100.0, 93.0)),
                            ("isotropic", (100.0, 81.0)))
            for c, v in zip(("clean", "aniso 1.5 %"), vals)]
    path = tmp_path / "cell_fit.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = analysis.cell_fit_table(path)
    assert list(table.columns) == ["isotropic", "cell prior 0 gain 1", "cell prior 0.04 gain 2"]
    assert list(table.index) == ["clean", "aniso 1.5 %", "mean"] and table.loc["mean", "isotropic"] == 90.5
    assert analysis.cell_fit_table(tmp_path / "missing.csv").empty


def test_rerank_depth_table_keeps_the_files_order_and_adds_the_mean(tmp_path):
    rows = [{"model": "default", "condition": c, "penalty": 0.01, "rule": r, "top1": v}
            for r, vals in (("refine 10 cell 10", (100.0, 94.0)), ("refine 30 cell 15", (100.0, 98.0)))
            for c, v in zip(("clean", "iso -2 %"), vals)]
    path = tmp_path / "rerank_depth.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = analysis.rerank_depth_table(path)
    assert list(table.columns) == ["refine 10 cell 10", "refine 30 cell 15"] and table.columns.name == "depth"
    assert list(table.index) == ["clean", "iso -2 %", "mean"] and table.loc["mean", "refine 30 cell 15"] == 99.0
    assert analysis.rerank_depth_table(tmp_path / "missing.csv").empty


def _script(name: str):
    """A script of ``scripts/`` imported as a module (its functions are tested; its ``main`` is not run)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _select_rerank():
    return _script("select_rerank")


def test_choose_depth_takes_the_cheapest_of_the_depths_tied_with_the_best():
    choose = _select_rerank().choose_depth
    means = pd.Series({"refine 10 cell 10": 87.0, "refine 30 cell 30": 88.1, "refine 30 cell 20": 88.05,
                       "refine 20 cell 20": 87.95})
    assert choose(means) == "refine 30 cell 20"  # within 0.1 of the best and cheaper than 30/30
    assert choose(means.drop("refine 30 cell 20")) == "refine 30 cell 30"
    assert choose(means.add(pd.Series({"refine 20 cell 20": 0.1}), fill_value=0)) == "refine 20 cell 20"
    assert choose(pd.Series({"refine 10 cell 10": 87.0, "refine 30 cell 30": 88.2})) == "refine 30 cell 30"


def test_the_shipped_depth_is_the_one_the_validation_grid_chose():
    from eacnn.retrieval.identify import CELL_FITS, RERANK_DEPTH

    table = analysis.rerank_depth_table()
    assert not table.empty, "eacnn/data/rerank_depth.csv is shipped"
    assert _select_rerank().choose_depth(table.loc["mean"]) == f"refine {RERANK_DEPTH} cell {CELL_FITS}"


def test_the_shipped_cosine_recall_is_the_one_the_validation_grid_chose(tmp_path):
    from eacnn.retrieval.refine import SEARCH

    table = analysis.cosine_recall_table()
    assert list(table.columns) == ["recall 0", "recall 5", "recall 10", "recall 20"]  # by N, not as text
    assert table.index[-1] == "mean" and "strong texture" in table.index
    assert _select_rerank().choose_recall(table.loc["mean"]) == SEARCH.cosine_recall
    choose = _select_rerank().choose_recall
    assert choose(pd.Series({"recall 0": 86.0, "recall 10": 87.0, "recall 20": 87.05})) == 10  # within the tie
    assert choose(pd.Series({"recall 0": 86.0, "recall 5": 86.0})) == 0
    assert analysis.cosine_recall_table(tmp_path / "missing.csv").empty


def test_the_shipped_texture_fit_is_the_one_the_validation_grid_chose():
    from eacnn.paths import DATA_DIR
    from eacnn.retrieval.refine import TEXTURE_FITS, TEXTURE_MIN_GAIN, TEXTURE_PENALTY

    grid = pd.read_csv(DATA_DIR / "texture_fit.csv").pivot_table(index="condition", columns="rule", values="top1")
    assert _select_rerank().choose_texture(grid.mean()) == (TEXTURE_FITS, TEXTURE_MIN_GAIN, TEXTURE_PENALTY)
    choose = _select_rerank().choose_texture
    assert choose(pd.Series({"no texture": 90.0, "texture 5 gain 2 prior 0": 89.0}))[0] == 0
    assert choose(pd.Series({"no texture": 90.0, "texture 30 gain 2 prior 0": 91.0,
                             "texture 5 gain 4 prior 0": 91.0})) == (5, 4.0, 0.0)


def _mixture_script():
    return _script("mixtures")


def test_mixture_rules_replay_cuts_each_lax_path_at_the_first_step_a_rule_fails():
    """A lax search's path (every step's residual height, its σ ratio, agreement and gain) replayed under stricter
    rules: the phases found are the steps before the first that fails one rule."""
    replay = _mixture_script().replay
    paths = pd.DataFrame({
        "pattern": ["a", "a", "a", "b"], "k": [2, 2, 2, 1], "truth": ["X 1;Y 2"] * 3 + ["Z 3"], "step": [1, 2, 3, 1],
        "phase": ["X 1", "Y 2", "W 4", "Z 3"], "snr": [50.0, 20.0, 6.0, 40.0], "height": [0.9, 0.3, 0.05, 0.8],
        "agreement": [0.95, 0.8, 0.6, 0.9], "gain": [0.8, 0.5, 0.25, 0.9]})
    strict = replay(paths, significance=5.0, min_peak=0.08, min_gain=0.3, min_agreement=0.5).set_index("pattern")
    assert strict.loc["a", "exact"] and strict.loc["a", "spurious"] == 0 and strict.loc["b", "exact"]
    lax = replay(paths, significance=5.0, min_peak=0.04, min_gain=0.2, min_agreement=0.5).set_index("pattern")
    assert not lax.loc["a", "exact"] and lax.loc["a", "spurious"] == 1 and lax.loc["a", "named"] == 2
    none = replay(paths, significance=100.0, min_peak=0.0, min_gain=0.0, min_agreement=0.0).set_index("pattern")
    assert none.loc["a", "named"] == 0 and not none.loc["b", "exact"]


def test_grid_value_quotes_one_decimal_or_n_a():
    table = pd.DataFrame({"refine 30 cell 30": [99.25, 88.14]}, index=["iso -2 %", "mean"])
    assert analysis.grid_value(table, "iso -2 %", "refine 30 cell 30") == "99.2"
    assert analysis.grid_value(table, "aniso 1.5 %", "refine 30 cell 30") == "n/a"
    assert analysis.grid_value(table, "mean", "refine 10 cell 10") == "n/a"
    assert analysis.grid_value(pd.DataFrame(), "mean", "refine 30 cell 30") == "n/a"


# ---------------------------------------------------------------------------------------------------------------
# Learning and data-scaling curves (chapter 4, scripts/curves.py)
# ---------------------------------------------------------------------------------------------------------------
def _summary(rows):
    import pandas as pd

    base = {"max_epochs": 100, "patience": 20, "finished": True, "best_epoch": 30, "epochs_run": 50,
            "val_top1_perturbed": 0.0, "val_pool": 9047, "final_temperature": 0.05, "train_hours": 1.0,
            "test_top1": float("nan"), "test_top5": float("nan"), "test_pool": 9046}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_a_power_law_is_recovered_with_an_interval_that_holds_the_truth():
    from eacnn.analysis.curves import PAPER_TRAIN, scaling_fit

    sizes = [1000, 2000, 4000, 8000]
    rng = __import__("numpy").random.default_rng(0)
    rows = [{"tower": "paper", "n_train": n, "val_top1": 0.002 * (n / 1000) ** 0.8 * float(rng.lognormal(0, 0.03))}
            for n in sizes]
    fit = scaling_fit(_summary(rows), "paper")
    assert fit["points"] == 4 and abs(fit["b"] - 0.8) < 0.1
    value, low, high = fit["predict"][PAPER_TRAIN]
    truth = 0.002 * (PAPER_TRAIN / 1000) ** 0.8
    assert low <= truth <= high and low < value < high
    assert fit["extrapolation"][PAPER_TRAIN] > 19 and "extrapolation" in fit["trust"]


def test_too_few_points_give_no_prediction():
    from eacnn.analysis.curves import scaling_fit

    fit = scaling_fit(_summary([{"tower": "paper", "n_train": 1000, "val_top1": 0.003},
                                {"tower": "paper", "n_train": 2000, "val_top1": 0.0}]), "paper")
    assert fit["predict"] == {} and "too few" in fit["trust"]


def test_the_reproduction_sentence_says_what_the_runs_allow():
    from eacnn.analysis.curves import reproduction_sentence

    assert "No learning-curve run" in reproduction_sentence(_summary([]).iloc[0:0], 95.96)
    unfinished = _summary([{"tower": "paper", "n_train": 8142, "val_top1": 0.031, "finished": False,
                            "epochs_run": 40, "best_epoch": 39}])
    text = reproduction_sentence(unfinished, 95.96)
    assert "40 epochs on 8,142 structures" in text and "3.10 % clean validation Top-1" in text
    assert "still rising" in text and "95.96 %" in text
    done = _summary([{"tower": "paper", "n_train": 8142, "val_top1": 0.031, "test_top1": 0.0491}])
    assert "4.91 % clean Top-1 on the test pool" in reproduction_sentence(done, 95.96)
    assert "flattened" in reproduction_sentence(done, 95.96)
    # the largest *finished* run is the evidence; a larger one still training is named as such
    both = pd.concat([done, _summary([{"tower": "paper", "n_train": 16000, "val_top1": 0.01, "finished": False,
                                       "epochs_run": 8}])], ignore_index=True)
    text = reproduction_sentence(both, 95.96)
    assert text.startswith("With 50 epochs on 8,142 structures") and "16,000 structures is still training: epoch 8" in text


def test_the_default_towers_sentence_reports_each_finished_run_and_whether_data_helped():
    from eacnn.analysis.curves import default_sentence

    assert "No finished learning-curve run" in default_sentence(_summary([]).iloc[0:0])
    flat = _summary([{"tower": "default", "n_train": 1000, "val_top1": 0.99, "test_top1": 0.9906, "best_epoch": 21},
                     {"tower": "default", "n_train": 2000, "val_top1": 0.99, "test_top1": 0.9819, "best_epoch": 12},
                     {"tower": "default", "n_train": 4000, "val_top1": 0.97, "finished": False, "epochs_run": 5},
                     {"tower": "paper", "n_train": 8000, "val_top1": 0.03, "test_top1": 0.04}])
    text = default_sentence(flat)
    assert "clean Top-1 on the test pool (queries our own simulator made" in text
    assert "99.06 % with 1,000 structures (best epoch 21), 98.19 % with 2,000 structures (best epoch 12)" in text
    assert "moves by -0.87 points, within 1 point: its clean Top-1 is saturated" in text
    assert "4,000 structures is still training: epoch 5, validation Top-1 97.00 %" in text and "4.00" not in text
    rising = _summary([{"tower": "default", "n_train": 1000, "val_top1": 0.5, "test_top1": 0.50},
                       {"tower": "default", "n_train": 4000, "val_top1": 0.7, "test_top1": 0.70}])
    assert "moves by +20.00 points" in default_sentence(rising) and "saturated" not in default_sentence(rising)


def test_a_run_still_training_is_not_a_point_of_the_power_law():
    from eacnn.analysis.curves import scaling_fit

    rows = [{"tower": "paper", "n_train": n, "val_top1": 0.002 * n / 1000} for n in (1000, 2000, 4000)]
    assert scaling_fit(_summary(rows), "paper")["points"] == 3
    rows[-1]["finished"] = False
    assert scaling_fit(_summary(rows), "paper")["predict"] == {}


def test_embedding_collisions_count_only_other_phases():
    import numpy as np

    from eacnn.analysis.curves import embedding_collisions

    z = np.array([[1, 0, 0], [1, 1e-4, 0], [0, 1, 0], [0, 1, 1e-4], [0, 0, 1]], np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    phase = np.array(["A", "B", "C", "C", "D"])  # rows 0/1 collide across phases; 2/3 are one phase
    share, pairs = embedding_collisions(z, phase, threshold=0.999)
    assert share == 0.4 and pairs[["i", "j"]].values.tolist() == [[0, 1]]


def test_the_collision_report_names_pairs_and_their_pattern_similarity():
    import numpy as np
    import pandas as pd

    from eacnn.analysis.curves import collision_report

    z = np.array([[1, 0, 0], [1, 1e-4, 0], [0, 1, 0]], np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    labels = pd.DataFrame({"formula": ["MoS2", "MoS2", "NaCl"], "spacegroup_number": [164, 194, 225],
                           "spacegroup_symbol": ["P-3m1", "P6_3/mmc", "Fm-3m"]})
    patterns = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    numbers, table = collision_report({"paper": z, "ours": np.eye(3, dtype=np.float32)}, labels, patterns)
    assert numbers["paper"]["share"] == pytest.approx(2 / 3) and numbers["paper"]["pattern_cosine"] == 0.0
    assert numbers["ours"]["share"] == 0 and np.isnan(numbers["ours"]["pattern_cosine"])
    assert table.loc[0, "structure"] == "MoS2 (P-3m1)" and table.loc[0, "taken for"] == "MoS2 (P6_3/mmc)"
