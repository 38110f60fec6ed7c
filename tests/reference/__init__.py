"""Reference implementations the tests compare r3h with, written from the definitions (no r3h
code inside): tsvm.py (TSVM, R-TSVM), methods.py (the element-wise methods), recent_methods.py
(Iso-C, Iso-CTS, WUDI, RAM, SVC), analysis.py, mixture.py; mergekit.py drives MergeKit 0.1.4's
own code for the parity tests."""
