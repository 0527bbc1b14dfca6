"""Evaluation: held-out metrics, preference pairs, judge, regression probe, statistics, cost, endpoints."""
