"""`medft recommend`: a budgeted race of a grid's strategies per dataset x backbone (see policy.py)."""
