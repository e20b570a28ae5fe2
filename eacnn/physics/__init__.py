"""Physics layer: powder diffraction of a crystal, the one peak profile, perturbations of measurements.

Modules: :mod:`~eacnn.physics.xrd` (reflections, f_j, F_hkl, Debye–Waller, LP, the 140-bin grid),
:mod:`~eacnn.physics.profile` (the pseudo-Voigt and its bin integrals, used by the simulator and the perturbations),
:mod:`~eacnn.physics.perturb` (physical perturbations of a simulated pattern), :mod:`~eacnn.physics.wavelengths`
(the one table of anode lines), :mod:`~eacnn.physics.reference` (the comparison with pymatgen's ``XRDCalculator``). Imports only the leaves (config, errors, paths).
"""
