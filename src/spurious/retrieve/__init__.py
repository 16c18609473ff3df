"""Stage ``retrieve``: rank an unlabeled pool by component value and keep what several models agree on.

How the paper found real images that show a spurious feature without the class object: rank a
large pool (OpenImages, ~9M images) by ``alpha_l^k`` for every selected component ``(k, l)``,
keep the images that at least ``m`` of ``n`` classifiers predict as class ``k``, and hand the top
``N`` per component to people (``spurious label``, curate task) who confirm that the object is
absent. :mod:`spurious.benchmark` turns the confirmed images into a benchmark.

Ranking. ``alpha_l^k(x) = <1, v_l> <v_l, w_k ⊙ phi(x) - mu_k> = phi(x) . a_l - c_l`` (DESIGN.md), so
the pool's stored ``phi`` is ranked for *all* selected components at once by one float32 matrix
product per chunk, ``[C, D] @ [D, n]``, streamed over the pool's shards (a reader thread converts
the next chunk from float16 while BLAS works on this one); a running top-``keep`` per component is
merged in with a threshold test, so memory is ``O(chunk + C * keep)`` whatever the pool size.
The kept rows are re-scored in float64 (:meth:`spurious.npca.ClassBasis.alpha`) for the output.

Agreement. A *voter* is a model's top-1 prediction on the pool images:

* ``self``: the workspace's own model (its predictions were stored by ``extract``); counts by default;
* ``--agree WS2``: another workspace that extracted the same pool (its stored top-k), matched to
  the pool by image id (never by row order); images it lacks get no vote from it;
* ``--agree-model SPEC``: a model run on the pool images here. It runs only on the shortlist (the
  top ``N * oversample`` per component among the images that can still reach ``m`` votes), and its
  predictions are cached by image id in ``WS/retrieve/votes/<slug>/`` (kept across runs and
  ``--overwrite``), so each image is classified at most once.

A candidate needs ``votes >= m`` (default 2). Voters must share the workspace's class space (same
number of classes, same order: check this for models trained on other label sets). Without
``--agree-model`` voters the filter is applied while streaming and the result is exact: the top
``N`` by alpha among all agreed images. With them it is exact unless fewer than ``N`` of the
shortlist pass (then a warning says to raise ``oversample``).

Dependence (optional, ``dependence="flip"``). The method's *harmful* spurious feature is one
that is enough on its own to trigger the class. The test keeps a candidate for ``(k, l)`` only
when the workspace model predicts ``k`` and removing the component's positive part (SpuFix with
``S_k = {l}``, DESIGN.md) flips it: ``f_k(x) - max(alpha_l^k(x), 0) < max_{j != k} f_j(x)`` (plus an
optional margin). It needs no model run: ``f_k`` and the runner-up are the top-2 logits that
``extract`` stored, and ``alpha`` is the score being ranked, so it is applied while streaming
(leniently in float32, exactly in float64 on the kept rows). Default ``"none"``: on the planted
data the test removed most of the feature-only images too (docs/retrieve.md, "Measured").

Output ``WS/retrieve/``: ``plan.json``, ``candidates.jsonl`` (one JSON object per line: ``class``,
``component``, ``rank`` (0-based, alpha descending), ``id``, ``path`` (absolute path of the image
file, ``null`` for a pool imported without files), ``alpha``, ``votes``, ``models``), sorted by
(class, component, rank); ``gallery/index.html`` linking one page per component,
``gallery/class_KKKKK/lLLLL.html``; ``manifest.json`` (written last; ``result`` holds the counts per
component, which the ``--json`` summary leaves out). A killed run resumes from its last checkpoint (``state/``); a finished run with the
same plan is reused; a different plan is refused unless ``overwrite``. Under ``torchrun`` each rank
ranks every ``world_size``-th shard and rank 0 merges.

Modules: ``_select`` (which components), ``_rank`` (the streaming rank and its checkpoints),
``_pool`` (the pool's store, ids, files and stored predictions), ``_voters`` (the voters),
``_stage`` (:func:`retrieve` as a list of named steps, its outputs), ``_gallery`` (the HTML).
"""

from __future__ import annotations

from spurious.retrieve._rank import Ranking, rank_pool
from spurious.retrieve._select import components_to_retrieve
from spurious.retrieve._stage import (
    DEPENDENCE_TESTS,
    RetrieveResult,
    load_candidates,
    retrieve,
)
from spurious.retrieve._voters import Voter

__all__ = [
    "DEPENDENCE_TESTS",
    "Ranking",
    "RetrieveResult",
    "Voter",
    "load_candidates",
    "components_to_retrieve",
    "rank_pool",
    "retrieve",
]
