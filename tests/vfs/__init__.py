"""Tests of the kernel file driver's pure control-page cores."""
