"""The token tiers: the partner OAuth token and the per-(customer, invoice) checkout
JWTs, their cache, renewal schedule, mint coordination seam and the vendor's rate budget."""
