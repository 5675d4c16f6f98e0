"""What the HTTP API answers, as pydantic models for its OpenAPI document.

The routes build their answers from the domain's `public()` forms; these models describe
them (the fuzzer in tests/test_fuzz.py holds live answers to them), and `problem.errors`
declares the problem documents a route can answer.
"""
