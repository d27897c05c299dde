"""The budget check (``convcost check``), beside the stages: the budget file
(:mod:`~convcost.check.budget_file`), the verdicts (:mod:`~convcost.check.verdicts`), the
baselines (:mod:`~convcost.check.baseline`) and the run (:mod:`~convcost.check.run`), whose
measurements go through :func:`convcost.jobs.run_check` like analyze's."""
