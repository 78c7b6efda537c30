"""Planning: the privacy mechanism and what is computed from it before anything trains (no torch).

One frozen value, ``Mechanism`` (sigma, q, T, delta, the neighbouring relation, the unit and the accountant),
gives every epsilon; ``PrivacyPlan`` is a run's mechanism with its target and published population
(``make_plan``); ``plan_curves`` draws it progressively for the Plan tab and the planner widget; ``recommend``
chooses batch and steps for a budget. The CLI, the app, the widgets, the trainer, sweeps and the ledger all
take their numbers from here, so every surface shows the same epsilon for the same settings.
"""
