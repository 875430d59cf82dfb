"""Pictures of what a pruner kept: camera mosaics, retention curves, bird's-eye views, HTML pages.

``persistence`` (the ``kept/`` files an evaluation run writes), ``collect`` (from a pruned forward
to those files), ``mosaic``, ``curves``, ``bev`` (the drawings), ``html`` (the scene page),
``runs`` (run folders as the viewer reads them) and ``render`` (a scene's files). The command line
is :mod:`vla_autoprune.visualize`.
"""
