"""XTREME evaluation: metrics (``metrics``), prediction/label files (``xtreme_io``), XTREME
scores and resource tiers (``xtreme_score``, CLI ``score``), the exact blockwise retrieval scorer
(``knn``) and BUCC / Tatoeba retrieval (``retrieval``, with its CLI)."""
