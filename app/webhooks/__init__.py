"""Completion webhooks that are never lost: owed in the same script that ends a run (the
session's outbox), claimed and sent by any worker, retried with backoff, signed the
Standard Webhooks way."""
