"""The two towers: symmetry of the structure embedding, shapes, the temperature, inference helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eacnn.config import ModelConfig  # noqa: E402
from eacnn.errors import PatternError, StructureError  # noqa: E402
from eacnn.datasets.graphs import collate_graphs, structure_graph  # noqa: E402
from eacnn.models import EACNN, XRDEncoder, lattice_descriptors  # noqa: E402
from eacnn.physics.xrd import XRDSimulator  # noqa: E402

# A small model with vector (L=1) features, so that the test exercises equivariant channels, not only scalars
SMALL = dict(channels=8, max_L=1, max_ell=2, correlation=2, radial_mlp=16, readout_dim=8, mlp_dim=32, embed_dim=16,
             xrd_dim=32, xrd_channels=8, xrd_blocks=1, sim_pattern_channels=8, lattice_n_d=6)
TOL = 1e-4  # on unit-norm embeddings, float32


@pytest.fixture(scope="module")
def structures():
    from eacnn.datasets.structures import embedded_structures

    _, structs = embedded_structures("val", limit=16)
    usable = []
    for s in structs:
        try:
            structure_graph(s, 5.0)
        except Exception:
            continue
        usable.append(s)
    return usable[:4]


def _model(kind: str, **extra) -> EACNN:
    torch.manual_seed(0)
    return EACNN(ModelConfig(kind=kind, **SMALL, **extra)).eval()


@pytest.fixture(scope="module")
def models():
    """One model of each kind, shared (building one compiles e3nn code: ~1-2 s)."""
    return {"paper": _model("paper"), "eacnn": _model("eacnn")}


def _embed(model: EACNN, structs) -> torch.Tensor:
    return model.encode_structures(structs, progress=False)


def _rotated(s, rot):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(s.lattice.matrix @ rot.T), s.species, s.frac_coords)


def _translated(s, shift):
    from pymatgen.core import Structure

    return Structure(s.lattice, s.species, (s.frac_coords + shift) % 1.0)


def _permuted(s, perm):
    from pymatgen.core import Structure

    return Structure(s.lattice, [s.species[i] for i in perm], s.frac_coords[perm])


def _random_orthogonal(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if rng.random() < 0.5 else -q  # proper or improper: O(3)


@pytest.mark.parametrize("kind", ["paper", "eacnn"])
def test_structure_embedding_is_invariant(structures, models, kind):
    rng = np.random.default_rng(1)
    model = models[kind]
    ref = _embed(model, structures)
    assert torch.allclose(ref.norm(dim=1), torch.ones(len(structures)), atol=1e-5)
    copies = {
        "rotation": [_rotated(s, _random_orthogonal(rng)) for s in structures],
        "translation": [_translated(s, rng.random(3)) for s in structures],
        "permutation": [_permuted(s, rng.permutation(len(s))) for s in structures],
        "supercell 2x1x1": [s * (2, 1, 1) for s in structures],
    }
    for name, structs in copies.items():
        err = float((_embed(model, structs) - ref).abs().max())
        assert err < TOL, f"{kind}: {name} changes the embedding by {err:.2e}"
    # and the embedding does tell structures apart
    assert float((ref[0] - ref[1]).abs().max()) > 10 * TOL


def test_mean_and_std_pooling_are_supercell_invariant(structures):
    model = _model("eacnn", pooling="mean+std")
    s = structures[:2]
    err = float((_embed(model, [x * (1, 2, 2) for x in s]) - _embed(model, s)).abs().max())
    assert err < TOL


def test_lattice_descriptors_do_not_depend_on_the_cell_setting():
    """Rock salt: the 8-atom conventional cell, the 2-atom primitive cell and a skewed setting of it agree; the
    first allowed reflection is 111 (100 and 110 are extinct for a face-centred lattice)."""
    from pymatgen.core import Lattice, Structure

    a = 5.64
    conv = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    prim = conv.get_primitive_structure()
    skew = prim.copy()
    skew.make_supercell([[1, 1, 0], [0, 1, 0], [0, 0, 1]])  # same lattice, another basis (det 1)
    graphs = [structure_graph(s, 5.0) for s in (conv, prim, skew)]
    desc = lattice_descriptors(collate_graphs(graphs), n_d=8, d_min=1.0)  # [3, 10]
    assert len(conv) == 8 and len(prim) == 2
    assert torch.allclose(desc[0], desc[1], atol=1e-5) and torch.allclose(desc[0], desc[2], atol=1e-5)
    assert math.isclose(float(desc[0, 0]), math.log(a**3 / 8) - 3.0, rel_tol=1e-5)  # log volume per atom
    density = (22.98977 + 35.453) * 4 * 1.66053907 / a**3  # g/cm³ (2.16 for NaCl)
    assert math.isclose(float(desc[0, 1]), math.log(density) - 1.5, abs_tol=1e-3)
    g = desc[0, 2:].numpy()
    np.testing.assert_allclose(g[:4], math.sqrt(3) / a, rtol=1e-5)  # 4 members of {111} in one Friedel half
    np.testing.assert_allclose(g[4:7], 2 / a, rtol=1e-5)  # then {200}


def test_xrd_tower_shapes():
    cfg = ModelConfig(**{**SMALL, "xrd_dim": 384})
    tower = XRDEncoder(cfg).eval()
    x = torch.rand(5, 140)
    assert tower.features(x).shape == (5, 384)
    assert tower(x).shape == (5, cfg.embed_dim)
    assert tower(torch.rand(5, 70)).shape == (5, cfg.embed_dim)  # global pooling: any grid length
    with pytest.raises(ValueError, match="n_bins"):
        tower(torch.rand(140))


def test_forward_shapes_normalisation_and_temperature(structures):
    model = _model("eacnn")  # own copy: the test changes its temperature
    sim = XRDSimulator()
    vectors = torch.from_numpy(np.stack([sim.vector(s) for s in structures]))
    graph = collate_graphs([structure_graph(s, 5.0) for s in structures])
    z_s, z_x, scale = model({"graph": graph, "pattern": vectors, "structure_pattern": vectors})
    assert z_s.shape == z_x.shape == (len(structures), SMALL["embed_dim"])
    assert torch.allclose(z_s.norm(dim=1), torch.ones(len(structures)), atol=1e-5)
    assert torch.allclose(z_x.norm(dim=1), torch.ones(len(structures)), atol=1e-5)
    assert math.isclose(float(scale), math.log(1 / 0.07), rel_tol=1e-6)
    # the inference helpers give the same embeddings, batched
    z_x2 = model.encode_patterns(vectors.numpy(), batch_size=3, progress=False)
    z_s2 = model.encode_structures(structures, batch_size=3, progress=False)
    np.testing.assert_allclose(z_x2, z_x.detach(), atol=1e-5)
    np.testing.assert_allclose(z_s2, z_s.detach(), atol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    clamped = model({"graph": graph, "pattern": vectors, "structure_pattern": vectors})[2]
    assert math.isclose(float(clamped), math.log(100), rel_tol=1e-6)
    with pytest.raises(ValueError, match="structure_pattern"):
        model({"graph": graph, "pattern": vectors})


def test_paper_kind_ignores_the_physics_inputs(structures, models):
    model = models["paper"]
    assert not model.needs_structure_pattern
    assert not hasattr(model.structure_encoder, "lattice_mlp")
    graph = collate_graphs([structure_graph(s, 5.0) for s in structures])
    z_s, _, _ = model({"graph": graph, "pattern": torch.rand(len(structures), 140)})
    assert z_s.shape == (len(structures), SMALL["embed_dim"])


@pytest.mark.parametrize("use_lattice, use_sim_pattern", [(True, False), (False, True)])
def test_ablation_switches(structures, use_lattice, use_sim_pattern):
    model = _model("eacnn", use_lattice=use_lattice, use_sim_pattern=use_sim_pattern)
    assert hasattr(model.structure_encoder, "lattice_mlp") == use_lattice
    assert model.needs_structure_pattern == use_sim_pattern
    assert model.encode_structures(structures[:2], progress=False).shape == (2, SMALL["embed_dim"])


def test_shared_xrd_tower(structures):
    """The own pattern through the XRD tower itself: forward and the inference helpers agree, no second CNN."""
    model = _model("eacnn", share_xrd_tower=True)
    assert model.needs_structure_pattern and not hasattr(model.structure_encoder, "pattern_cnn")
    sim = XRDSimulator()
    vectors = torch.from_numpy(np.stack([sim.vector(s) for s in structures]))
    graph = collate_graphs([structure_graph(s, 5.0) for s in structures])
    with torch.no_grad():
        z_s, z_x, _ = model({"graph": graph, "pattern": vectors, "structure_pattern": vectors})
    np.testing.assert_allclose(model.encode_structures(structures, batch_size=3, progress=False), z_s, atol=1e-5)
    np.testing.assert_allclose(model.encode_patterns(vectors.numpy(), progress=False), z_x, atol=1e-5)
    # rotating the crystal changes neither its graph invariants nor its pattern
    rot = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))[0].numpy()
    rotated = model.encode_structures([_rotated(s, rot) for s in structures], progress=False)
    np.testing.assert_allclose(rotated, z_s, atol=TOL)
    with pytest.raises(ValueError, match="structure_pattern"):
        model({"graph": graph, "pattern": vectors})


def test_bad_inputs_are_refused(structures, models):
    model = models["paper"]
    with pytest.raises(PatternError, match=r"\[n, 140\]"):
        model.encode_patterns(np.ones((2, 100)), progress=False)
    with pytest.raises(PatternError, match="NaN"):
        model.encode_patterns(np.full((1, 140), np.nan), progress=False)
    with pytest.raises(PatternError, match="no positive"):
        model.encode_patterns(np.zeros((1, 140)), progress=False)
    graph = collate_graphs([structure_graph(structures[0], 5.0)])
    graph["atomic_numbers"] = graph["atomic_numbers"].clone().fill_(99)
    with pytest.raises(StructureError, match="99"):
        model.structure_encoder(graph)
