"""Summaries, tables (CSV, Markdown, LaTeX) and figures, from metrics files only."""
