"""The report's figures, one module each (paper Figs. 1, 2, 4 and the reliability diagrams).

Each ``plot_*`` writes one PNG and returns its path, or None (nothing written) when no run
has the data it draws.
"""
