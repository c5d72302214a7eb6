"""Builders the tests share: tiny refiners and labelled shards (`refine`), tiny training
configs and image pools (`train`), hostile tars and PNGs (`tars`), and the generated
stand-in digits and eyes of the evaluation tests (`standins`). Fixtures live in
tests/conftest.py."""
