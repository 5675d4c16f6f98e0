"""Subscriptions: which account each agent uses, and the one switch per burst of failures."""
