"""Evaluating synthetic sets: fresh networks trained on a set and tested on the real test set.

``protocol`` (the protocol and one set's evaluation), ``stacked`` (R networks in one Lightning loop),
``sets`` (what can be evaluated, and the labels every report uses), ``suite`` (all of it from a config),
``tables`` (eval.json, the printed table, logger keys).
"""
