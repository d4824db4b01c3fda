"""`compare`: which scheme for this fleet, at what cost, with how much confidence.

One experiment config in; the schemes that apply to its model and fleet (applicability), each tuned with the same
budget on the validation split and its winner run on fresh seeds (the fair tuning protocol, msfusion_ray.tuning),
hopeless tuning runs stopped early by a stated rule (early_stop); then the decision from the records
(analysis.decision).
"""
