"""Agents of your own behind leasegate: see README, "Put your own agent behind leasegate"."""
