"""How the zoo's models and figures are made: the training recipe, its evaluation and the synthetic calibration.

Nothing at runtime imports this package (loading a ``zoo:`` model, building a synthetic one and reading the held-out
prompts need only ``specdec.zoo``); it is run as commands:

- ``python -m specdec.zoo.recipe.train``: train the ``tiny-code`` pair (``train.py`` over ``corpus.py``,
  ``trainer.py``; the card by ``card.py``);
- ``python -m specdec.zoo.recipe.evaluate``: measure the pair (``cost.py``, ``agreement.py``, the engine) and
  re-render its card;
- ``python -m specdec.zoo.recipe.calibrate``: measure agreement and cost of synthetic pairs against ``mix``
  (the figures in ``calibration.json``).
"""
