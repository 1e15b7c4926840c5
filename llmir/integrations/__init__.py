"""Bridges from llmir's runtime to model frameworks.

Each bridge is an optional extra: `llmir.integrations.transformers` needs
``pip install 'llmir[hf]'`` (torch and transformers) and is never imported by
``import llmir``.
"""
