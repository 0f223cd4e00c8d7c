"""Data checks: a registry of small functions, each with a code, a severity and a line."""
