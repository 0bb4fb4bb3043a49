"""QueryRec: CTR prediction in the feed with a search-query representation (CIKM 2024).

Offline core: KuaiSAR-format data reading and synthesis, dataset preparation, the feature
schema, models, losses, diffusion, training, evaluation and the `queryrec` CLI.
"""

__version__ = "0.1.0"
