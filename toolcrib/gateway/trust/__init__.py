"""Who is calling and what they may do: identity, authenticators, policy, approvals, quarantine,
upstream secrets and redaction. Nothing here calls an upstream."""
