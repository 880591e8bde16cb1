"""Readers that turn each real source (PRM800K phase 1/2, MATH500, GSM8K, ProcessBench) into
hiprm.records, and the builders that turn rated solutions into ORM / PRM / HRM training examples.
"""
