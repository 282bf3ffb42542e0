"""The wire protocol shared with the original Node.js services: names, envelopes, broker tokens, rate limits.

Everything a peer must agree with is defined in this package, once.
"""
